//! `agentctl policy apply | list | show | validate`.
//!
//! `validate` runs the daemon's own parser and compiler locally, so a file that
//! validates here is one `apply` accepts (on a machine with the same files, since
//! exact rule paths are resolved to real files).

use std::path::{Path, PathBuf};

use super::{
    client::Client,
    error::CliError,
    output::{self, key_values, or_dash},
};
use crate::{api::pb, policy};

pub async fn apply(socket: &Path, file: &Path, json: bool) -> Result<(), CliError> {
    let yaml = std::fs::read_to_string(file).map_err(|e| CliError::io(format!("cannot read {}", file.display()), e))?;
    let mut c = Client::connect(socket).await?;
    let reply = c.policy_apply(pb::PolicyApplyRequest { yaml, file_name: file.display().to_string() }).await?;
    if json {
        return output::json(&reply);
    }
    let p = reply.policy.unwrap_or_default();
    output::print(format!(
        "applied policy {} version {} ({} rules, {}, sha256 {})",
        p.name,
        p.version,
        p.rules,
        p.mode,
        short_hash(&p.hash)
    ))?;
    for w in &reply.warnings {
        eprintln!("{}", warning_line(&file.display().to_string(), w));
    }
    Ok(())
}

pub async fn list(socket: &Path, json: bool) -> Result<(), CliError> {
    let reply = Client::connect(socket).await?.policy_list().await?;
    if json {
        return output::json(&reply);
    }
    if reply.policies.is_empty() {
        return output::print("no policies (add one with `agentctl policy apply FILE`)");
    }
    let mut t = output::table(&["NAME", "VERSION", "MODE", "RULES", "APPLIED", "SHA256", "DESCRIPTION"]);
    for p in &reply.policies {
        t.add_row(vec![
            p.name.clone(),
            p.version.to_string(),
            p.mode.clone(),
            p.rules.to_string(),
            or_dash(&p.applied_at),
            short_hash(&p.hash).to_string(),
            or_dash(&p.description),
        ]);
    }
    output::print(output::render_table(&t))
}

pub async fn show(socket: &Path, name: &str, json: bool, yaml_only: bool) -> Result<(), CliError> {
    let reply = Client::connect(socket).await?.policy_show(name).await?;
    if json {
        return output::json(&reply);
    }
    if yaml_only {
        let text = reply.yaml.strip_suffix('\n').unwrap_or(&reply.yaml);
        return output::print(text);
    }
    output::print(show_text(&reply))
}

/// The human form of `policy show`: summary, the rule table, the YAML.
fn show_text(reply: &pb::PolicyShowReply) -> String {
    let p = reply.policy.clone().unwrap_or_default();
    let mut out = key_values(&[
        ("name", p.name),
        ("description", or_dash(&p.description)),
        ("version", p.version.to_string()),
        ("mode", p.mode),
        ("rules", p.rules.to_string()),
        ("system", system_text(&reply.system_allows)),
        ("sha256", p.hash),
        ("applied_at", or_dash(&p.applied_at)),
    ]);
    // Rules with the kernel's decision counts for this version, then each kind's default.
    let counts = |h: &Option<pb::Hits>| {
        let h = h.unwrap_or_default();
        vec![h.allow.to_string(), h.deny.to_string(), h.would_deny.to_string(), h.audit.to_string()]
    };
    let mut t = output::table(&["ID", "KIND", "LINE", "RULE", "ALLOW", "DENY", "WOULD-DENY", "AUDIT"]);
    for r in &reply.rules {
        // Line 0: a built-in unix rule, not written in the file.
        let line = if r.line == 0 { "built-in".to_string() } else { r.line.to_string() };
        let mut row = vec![r.id.to_string(), r.kind.clone(), line, r.text.clone()];
        row.extend(counts(&r.hits));
        t.add_row(row);
    }
    for (kind, h) in [
        ("exec", &reply.exec_default_hits),
        ("write", &reply.write_default_hits),
        ("egress", &reply.egress_default_hits),
        ("unix", &reply.unix_default_hits),
    ] {
        let mut row = vec!["0".to_string(), kind.to_string(), "-".to_string(), format!("(default of {kind})")];
        row.extend(counts(h));
        t.add_row(row);
    }
    out.push_str("\n\n");
    out.push_str(&output::render_table(&t));
    if !reply.yaml.is_empty() {
        out.push_str("\n\n--- yaml\n");
        out.push_str(reply.yaml.trim_end());
    }
    out
}

/// `namespaces deny, ptrace allow`: every `spec.system` key, allowed or not.
fn system_text(allows: &[String]) -> String {
    policy::System::KEYS
        .iter()
        .map(|k| format!("{k} {}", if allows.iter().any(|a| a == k) { "allow" } else { "deny" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks files offline: every problem as `file:line:col: message` on stderr, and
/// `FILE: ok (N rules)` on stdout for each good file (the file's rules: the
/// built-in unix rules, which protect `socket` among others, come on top). Fails
/// if any file is bad.
pub fn validate(socket: &Path, files: &[PathBuf]) -> Result<(), CliError> {
    let builtins = policy::Builtins::new(socket);
    let mut bad = 0;
    for file in files {
        let name = file.display().to_string();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{name}: cannot read: {e}");
                bad += 1;
                continue;
            }
        };
        match policy::parse_with(&name, &text, &builtins).and_then(|p| policy::compile(&p)) {
            Ok(compiled) => {
                let written = compiled.rules.iter().filter(|r| !r.builtin).count();
                output::print(format!("{name}: ok ({written} rules)"))?;
                for w in &compiled.warnings {
                    eprintln!("{}", warning_line(&name, w));
                }
            }
            Err(errors) => {
                for e in errors.iter() {
                    eprintln!("{e}");
                }
                bad += 1;
            }
        }
    }
    if bad > 0 {
        if files.len() > 1 {
            eprintln!("agentctl: {bad} of {} policy files have errors", files.len());
        }
        return Err(CliError::Reported);
    }
    Ok(())
}

/// `FILE: warning: text`, whether or not the warning already names the file.
fn warning_line(file: &str, warning: &str) -> String {
    let rest = warning.strip_prefix(file).and_then(|r| r.strip_prefix(':')).map(str::trim_start);
    match rest {
        Some(rest) if rest.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
            // file:line:col: text → file:line:col: warning: text
            match rest.split_once(": ") {
                Some((pos, text)) => format!("{file}:{pos}: warning: {text}"),
                None => format!("{file}: warning: {rest}"),
            }
        }
        Some(rest) => format!("{file}: warning: {rest}"),
        None => format!("{file}: warning: {warning}"),
    }
}

fn short_hash(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_name_the_file_once() {
        assert_eq!(warning_line("a.yaml", "a.yaml: `ask` is deny"), "a.yaml: warning: `ask` is deny");
        assert_eq!(warning_line("a.yaml", "a.yaml:4:7: host rules skipped"), "a.yaml:4:7: warning: host rules skipped");
        assert_eq!(warning_line("a.yaml", "host rules skipped"), "a.yaml: warning: host rules skipped");
    }

    #[test]
    fn show_lists_rules_and_yaml() {
        let reply = pb::PolicyShowReply {
            policy: Some(pb::PolicySummary {
                name: "coder".into(),
                version: 2,
                mode: "enforce".into(),
                rules: 1,
                hash: "ab".repeat(32),
                ..Default::default()
            }),
            yaml: "apiVersion: agentd.io/v1\n".into(),
            rules: vec![pb::Rule {
                id: 1,
                kind: "exec".into(),
                text: "{path: /usr/bin/git, action: allow}".into(),
                line: 9,
                action: "allow".into(),
                hits: Some(pb::Hits { allow: 41, deny: 0, would_deny: 0, audit: 0 }),
            }],
            exec_default_hits: Some(pb::Hits { allow: 0, deny: 3, would_deny: 0, audit: 0 }),
            ..Default::default()
        };
        let s = show_text(&reply);
        assert!(s.starts_with("name:        coder\n"), "{s}");
        assert!(s.contains("description: -"), "{s}");
        assert!(s.contains("\nsystem:      namespaces deny, ptrace deny\n"), "{s}");
        let ptrace = pb::PolicyShowReply { system_allows: vec!["ptrace".into()], ..reply.clone() };
        assert!(show_text(&ptrace).contains("\nsystem:      namespaces deny, ptrace allow\n"));
        assert!(
            s.lines()
                .any(|l| l.starts_with('1') && l.contains("exec") && l.contains("{path: /usr/bin/git, action: allow}") && l.contains("41")),
            "{s}"
        );
        assert!(s.lines().any(|l| l.contains("(default of exec)") && l.contains('3')), "{s}");
        assert!(s.lines().any(|l| l.contains("(default of unix)")), "{s}");
        let builtin = pb::Rule {
            id: 2,
            kind: "unix".into(),
            text: "{path: /run/docker.sock, action: deny}  # built-in: Docker starts containers".into(),
            line: 0,
            action: "deny".into(),
            hits: None,
        };
        let with_builtin = pb::PolicyShowReply { rules: vec![builtin], ..reply.clone() };
        let s = show_text(&with_builtin);
        assert!(s.lines().any(|l| l.starts_with('2') && l.contains("unix") && l.contains("built-in")), "{s}");
        assert!(s.ends_with("--- yaml\napiVersion: agentd.io/v1"), "{s}");
    }

    #[test]
    fn validate_reports_bad_files_and_fails() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "apiVersion: agentd.io/v1\nkind: AgentPolicy\nbogus: 1\n").unwrap();
        let socket = Path::new(policy::DEFAULT_AGENTD_SOCKET);
        assert!(matches!(validate(socket, &[bad]), Err(CliError::Reported)));
        assert!(matches!(validate(socket, &[dir.path().join("missing.yaml")]), Err(CliError::Reported)));
    }
}
