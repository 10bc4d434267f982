//! `agentctl approvals list | watch`, `agentctl approve ID [--for D]`,
//! `agentctl deny ID [--reason TEXT]`: the person's side of a hold.

use std::{io::Write as _, path::Path, time::Duration};

use tokio::io::AsyncBufReadExt as _;
use tokio_stream::StreamExt as _;

use super::{
    client::Client,
    error::CliError,
    output::{self, or_dash},
};
use crate::api::pb;

pub async fn list(socket: &Path, json: bool) -> Result<(), CliError> {
    let reply = Client::connect(socket).await?.approvals().await?;
    if json {
        return output::json(&reply);
    }
    if reply.pending.is_empty() {
        output::print("nothing is waiting for approval")?;
    } else {
        let mut t = output::table(&["ID", "IDENTITY", "OWNER", "KIND", "TARGET", "ARGS", "RULE", "DEADLINE"]);
        for h in &reply.pending {
            t.add_row(vec![
                h.id.clone(),
                h.identity.clone(),
                or_dash(&h.owner),
                h.kind.clone(),
                h.target.clone(),
                or_dash(&h.argv.iter().skip(1).cloned().collect::<Vec<_>>().join(" ")),
                format!("{} {}", h.rule_id, h.rule),
                format!("{} (then {})", h.deadline, h.on_timeout),
            ]);
        }
        output::print(output::render_table(&t))?;
    }
    if !reply.grants.is_empty() {
        let mut t = output::table(&["GRANTED TO", "KIND", "TARGET", "UNTIL", "BY"]);
        for g in &reply.grants {
            t.add_row(vec![g.identity.clone(), g.kind.clone(), g.target.clone(), g.until.clone(), or_dash(&g.granted_by)]);
        }
        output::print(format!("\n{}", output::render_table(&t)))?;
    }
    Ok(())
}

pub async fn approve(socket: &Path, id: &str, for_: Option<Duration>, json: bool) -> Result<(), CliError> {
    let secs = match for_ {
        None => 0,
        Some(d) if d.as_secs() == 0 => return Err(CliError::Usage("--for must be at least 1s".into())),
        Some(d) => d.as_secs(),
    };
    let reply = Client::connect(socket).await?.approve(id, secs).await?;
    if json {
        return output::json(&reply);
    }
    output::print(decided_line(&reply))
}

pub async fn deny(socket: &Path, id: &str, reason: &str, json: bool) -> Result<(), CliError> {
    let reply = Client::connect(socket).await?.deny(id, reason).await?;
    if json {
        return output::json(&reply);
    }
    output::print(decided_line(&reply))
}

fn decided_line(r: &pb::DecideReply) -> String {
    let h = r.hold.clone().unwrap_or_default();
    let res = r.resolution.clone().unwrap_or_default();
    let what = format!("{} {} by {}", h.kind, h.target, h.identity);
    match (res.verdict.as_str(), res.until.is_empty()) {
        ("allow", true) => format!("approved {}: {what}", h.id),
        ("allow", false) => format!("approved {}: {what}, and the same until {}", h.id, res.until),
        _ => format!("denied {}: {what}{}", h.id, if res.reason.is_empty() { String::new() } else { format!(" ({})", res.reason) }),
    }
}

fn hold_line(h: &pb::Hold) -> String {
    let args = h.argv.iter().skip(1).cloned().collect::<Vec<_>>().join(" ");
    format!(
        "[{}] {} (owner {}) wants to {} {}{} — rule {} {} — deadline {} (then {})",
        h.id,
        h.identity,
        or_dash(&h.owner),
        h.kind,
        h.target,
        if args.is_empty() { String::new() } else { format!(" {args}") },
        h.rule_id,
        h.rule,
        h.deadline,
        h.on_timeout
    )
}

/// Follows holds as they come and go. In a terminal (and without --json) each new
/// hold is asked about: y approves once, a approves for 10 minutes, n denies,
/// Enter leaves it for someone else.
pub async fn watch(socket: &Path, json: bool) -> Result<(), CliError> {
    let mut c = Client::connect(socket).await?;
    let mut stream = c.approvals_watch().await?;
    let interactive = !json && std::io::IsTerminal::is_terminal(&std::io::stdin());
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let ev = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            next = stream.next() => match next {
                Some(Ok(e)) => e,
                Some(Err(s)) => return Err(CliError::rpc(s, socket)),
                None => return Err(CliError::StreamClosed),
            },
        };
        if json {
            output::json_line(&ev)?;
            continue;
        }
        let h = ev.hold.clone().unwrap_or_default();
        if ev.r#type == "resolved" {
            let r = ev.resolution.unwrap_or_default();
            output::print(format!("[{}] {} ({}{})", h.id, r.verdict, r.how, if r.decided_by.is_empty() { String::new() } else { format!(", by {}", r.decided_by) }))?;
            continue;
        }
        output::print(hold_line(&h))?;
        if !interactive {
            continue;
        }
        print!("approve? [y]es once / [a]lways for 10m / [n]o / Enter: skip > ");
        let _ = std::io::stdout().flush();
        let answer = match stdin.next_line().await {
            Ok(Some(l)) => l.trim().to_lowercase(),
            _ => return Ok(()),
        };
        let mut c = Client::connect(socket).await?;
        let reply = match answer.as_str() {
            "y" | "yes" => c.approve(&h.id, 0).await,
            "a" | "always" => c.approve(&h.id, 600).await,
            "n" | "no" => c.deny(&h.id, "denied at the prompt").await,
            _ => continue,
        };
        match reply {
            Ok(r) => output::print(decided_line(&r))?,
            // Someone else (or the deadline) was faster: say so and go on.
            Err(e) => output::print(format!("{e}"))?,
        }
    }
}
