//! `agentctl events [--follow] [--last N]`: the kernel's decisions, attributed.
//!
//! Without `--follow`: the kept events as one table (or one JSON document). With
//! it: one line (or one JSON object) per event as it arrives, until Ctrl-C.

use std::path::Path;

use serde::Serialize;
use tokio_stream::StreamExt as _;

use super::{
    client::Client,
    error::CliError,
    output::{self, or_dash, short_time},
    EventsArgs,
};
use crate::api::pb;

/// How many recent events `--follow` starts with, like `tail -f`.
const FOLLOW_BACKLOG: u32 = 10;

/// `events --json` without `--follow`: one document, shaped like the other lists.
#[derive(Serialize)]
struct EventList {
    events: Vec<pb::Event>,
}

pub async fn events(socket: &Path, args: EventsArgs) -> Result<(), CliError> {
    let last = args.last.unwrap_or(if args.follow { FOLLOW_BACKLOG } else { 0 });
    let mut c = Client::connect(socket).await?;
    let mut stream = c.events(args.follow, last).await?;
    let json = args.json.json;

    if !args.follow {
        let mut events = Vec::new();
        while let Some(e) = stream.next().await {
            events.push(e.map_err(|s| CliError::rpc(s, socket))?);
        }
        if json {
            return output::json(&EventList { events });
        }
        if events.is_empty() {
            return output::print("no events yet");
        }
        return output::print(event_table(&events));
    }

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            next = stream.next() => match next {
                Some(Ok(e)) if json => output::json_line(&e)?,
                Some(Ok(e)) => output::print(event_line(&e))?,
                Some(Err(s)) => return Err(CliError::rpc(s, socket)),
                None => return Err(CliError::StreamClosed),
            },
        }
    }
}

/// The KIND column: the action kind, and the operation when it says more
/// (`write unlink`, `egress sendmsg`).
fn kind(e: &pb::Event) -> String {
    if e.op.is_empty()
        || e.op == e.kind
        || (e.kind == "write" && e.op == "open")
        || (e.kind == "egress" && e.op == "connect")
    {
        e.kind.clone()
    } else {
        format!("{} {}", e.kind, e.op)
    }
}

/// The RULE column: the rule that decided (`#3 {path: ..., action: deny}`), or why no
/// rule did (`default`, `revoked`, `no-policy`, `unresolved`, ...).
fn rule(e: &pb::Event) -> String {
    if e.rule_id != 0 {
        if e.rule.is_empty() {
            format!("#{}", e.rule_id)
        } else {
            format!("#{} {}", e.rule_id, e.rule)
        }
    } else {
        or_dash(&e.reason)
    }
}

fn target(e: &pb::Event) -> String {
    let t = if e.protocol.is_empty() {
        or_dash(&e.target)
    } else {
        format!("{} {}", e.protocol, or_dash(&e.target))
    };
    if e.count > 1 {
        // An aggregate: the kernel counted these instead of sending each.
        format!(
            "{t} ({} more like it, until {})",
            e.count,
            short_time(&e.until)
        )
    } else {
        t
    }
}

fn event_table(events: &[pb::Event]) -> String {
    let mut t = output::table(&["TIME", "IDENTITY", "KIND", "VERDICT", "TARGET", "RULE", "PID", "COMM", "MECHANISM"]);
    for e in events {
        t.add_row(vec![
            short_time(&e.time),
            or_dash(&e.identity),
            kind(e),
            e.verdict.clone(),
            target(e),
            rule(e),
            e.pid.to_string(),
            or_dash(&e.comm),
            or_dash(&e.mechanism),
        ]);
    }
    output::render_table(&t)
}

/// One event on one line, for `--follow`: who, what verdict, on what, by which rule,
/// which process, enforced how.
pub fn event_line(e: &pb::Event) -> String {
    format!(
        "{}  {}  {} {}  {}  rule: {}  pid {} ({})  via {}",
        short_time(&e.time),
        or_dash(&e.identity),
        e.verdict.to_uppercase(),
        kind(e),
        target(e),
        rule(e),
        e.pid,
        or_dash(&e.comm),
        or_dash(&e.mechanism),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> pb::Event {
        pb::Event {
            time: "2025-06-01T12:00:00.123456789Z".into(),
            identity: "coder".into(),
            identity_id: 1,
            kind: "exec".into(),
            verdict: "kill".into(),
            mechanism: "tracepoint".into(),
            op: "exec".into(),
            reason: "rule".into(),
            rule_id: 3,
            rule: "{path: /usr/bin/curl, action: deny}".into(),
            policy: "coding-agent".into(),
            policy_version: 2,
            pid: 4242,
            tid: 4242,
            uid: 1000,
            cgroup_id: 77,
            comm: "bash".into(),
            executable: "/usr/bin/bash".into(),
            target: "/usr/bin/curl".into(),
            protocol: String::new(),
            policy_hash: "ab".repeat(32),
            count: 1,
            until: String::new(),
        }
    }

    #[test]
    fn an_aggregate_says_how_many_more_and_until_when() {
        let e = pb::Event {
            count: 98218,
            until: "2025-06-01T12:00:04.999999999Z".into(),
            ..sample()
        };
        let line = event_line(&e);
        assert!(
            line.contains("/usr/bin/curl (98218 more like it, until 2025-06-01T12:00:04.999Z)"),
            "{line}"
        );
        assert!(!event_line(&sample()).contains("more like it"));
    }

    #[test]
    fn one_line_per_event_names_everything_a_person_needs() {
        assert_eq!(
            event_line(&sample()),
            "2025-06-01T12:00:00.123Z  coder  KILL exec  /usr/bin/curl  rule: #3 {path: /usr/bin/curl, action: deny}  pid 4242 (bash)  via tracepoint"
        );
    }

    #[test]
    fn default_decisions_show_the_reason_and_egress_its_protocol() {
        let e = pb::Event {
            kind: "egress".into(),
            op: "sendmsg".into(),
            verdict: "deny".into(),
            reason: "default".into(),
            rule_id: 0,
            rule: String::new(),
            protocol: "udp".into(),
            target: "1.1.1.1:53".into(),
            mechanism: "sock_addr".into(),
            ..sample()
        };
        let line = event_line(&e);
        assert!(line.contains("DENY egress sendmsg  udp 1.1.1.1:53  rule: default"), "{line}");
    }

    #[test]
    fn table_has_the_documented_columns() {
        let s = event_table(&[sample()]);
        let header: Vec<_> = s.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(header, ["TIME", "IDENTITY", "KIND", "VERDICT", "TARGET", "RULE", "PID", "COMM", "MECHANISM"]);
        let row = s.lines().nth(1).unwrap();
        assert!(
            row.starts_with("2025-06-01T12:00:00.123Z") && row.contains("/usr/bin/curl") && row.ends_with("tracepoint"),
            "{s}"
        );
    }

    #[test]
    fn json_event_keys_are_the_proto_field_names() {
        let v = serde_json::to_value(sample()).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "cgroup_id",
                "comm",
                "count",
                "executable",
                "identity",
                "identity_id",
                "kind",
                "mechanism",
                "op",
                "pid",
                "policy",
                "policy_hash",
                "policy_version",
                "protocol",
                "reason",
                "rule",
                "rule_id",
                "target",
                "tid",
                "time",
                "uid",
                "until",
                "verdict"
            ]
        );
        let list = serde_json::to_value(EventList { events: vec![sample()] }).unwrap();
        assert_eq!(list["events"][0]["rule_id"], 3);
        // --follow --json: one object per line.
        assert!(!serde_json::to_string(&sample()).unwrap().contains('\n'));
    }
}
