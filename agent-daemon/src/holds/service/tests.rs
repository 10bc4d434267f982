//! What a person approving, and an agent waiting, would see.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::{seq::SliceRandom, SeedableRng};
use tokio::sync::{broadcast::error::TryRecvError, oneshot};

use super::*;

/// 2025-01-01T00:00:00Z: a fixed clock, so every time below is exact.
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_735_689_600)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn req(identity: &str, kind: HoldKind, target: &str) -> HoldRequest {
    let identity_id = match identity {
        "alpha" => 1,
        "beta" => 2,
        "gamma" => 3,
        "delta" => 4,
        _ => 99,
    };
    HoldRequest {
        identity: identity.to_string(),
        identity_id,
        owner: "ana@example.com".to_string(),
        kind,
        target: target.to_string(),
        argv: vec![target.to_string(), "--version".to_string()],
        pid: 4242,
        uid: 1000,
        comm: "agent".to_string(),
        executable: "/usr/bin/python3".to_string(),
        cgroup_path: "/sys/fs/cgroup/agents/alpha".to_string(),
        policy: "coder".to_string(),
        policy_version: 3,
        rule_id: 7,
        rule: "{path: /usr/bin/curl, action: ask}".to_string(),
        key_fingerprint: String::new(),
        policy_hash: String::new(),
    }
}

fn curl(identity: &str) -> HoldRequest {
    req(identity, HoldKind::Exec, "/usr/bin/curl")
}

fn settings() -> Approvals {
    Approvals::default()
}

/// Settings that never cap, for tests about something else.
fn uncapped() -> Approvals {
    Approvals { max_pending: 1000, ..Approvals::default() }
}

fn ana() -> Decider {
    Decider { uid: 1000, name: "ana".to_string() }
}

fn held(s: Submitted) -> (String, oneshot::Receiver<Resolution>) {
    match s {
        Submitted::Held { id, wait } => (id, wait),
        Submitted::Decided(r) => panic!("expected a hold, got {r:?}"),
    }
}

fn decided(s: Submitted) -> Resolution {
    match s {
        Submitted::Decided(r) => r,
        Submitted::Held { id, .. } => panic!("expected an immediate decision, got hold {id}"),
    }
}

fn approve_once() -> Decision {
    Decision::Approve { for_: None }
}

fn approve_for(d: Duration) -> Decision {
    Decision::Approve { for_: Some(d) }
}

fn deny(reason: &str) -> Decision {
    Decision::Deny { reason: reason.to_string() }
}

#[test]
fn a_hold_waits_until_approved_once_and_the_next_identical_request_is_held_again() {
    let mut s = HoldService::default();
    let (id, mut wait) = held(s.submit(curl("alpha"), &settings(), t0()));
    assert_eq!(id.len(), 8);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{id}");
    let (other, mut other_wait) = held(s.submit(curl("alpha"), &settings(), t0() + secs(1)));
    assert_ne!(id, other);

    // Nothing decides it by itself before the deadline.
    assert!(s.expire(t0() + secs(59)).is_empty());
    assert_eq!(wait.try_recv(), Err(oneshot::error::TryRecvError::Empty));
    let listed = s.pending();
    assert_eq!(listed.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [id.as_str(), other.as_str()]);
    let p = s.get(&id).unwrap();
    assert_eq!(p.request, curl("alpha"));
    assert_eq!((p.created_at, p.deadline, p.on_timeout), (t0(), t0() + secs(60), Verdict::Deny));

    let at = t0() + secs(30);
    let r = s.decide(&id, approve_once(), ana(), at).unwrap();
    let expected = Resolution {
        verdict: Verdict::Allow,
        how: How::Once,
        decided_by: Some(ana()),
        decided_at: at,
        reason: String::new(),
    };
    assert_eq!(r, expected);
    assert_eq!(wait.try_recv().unwrap(), expected);

    // Only that one: the identical request made meanwhile still waits.
    assert_eq!(other_wait.try_recv(), Err(oneshot::error::TryRecvError::Empty));
    assert_eq!(s.pending().len(), 1);
    assert!(s.grants(at).is_empty());
    // And the next identical request asks again.
    held(s.submit(curl("alpha"), &settings(), at));
    assert_eq!(s.pending().len(), 2);
}

#[test]
fn approve_for_resolves_the_identical_holds_and_allows_repeats_until_it_ends() {
    let mut s = HoldService::default();
    let (id, mut wait) = held(s.submit(curl("alpha"), &settings(), t0()));
    let (_, mut same) = held(s.submit(curl("alpha"), &settings(), t0() + secs(1)));
    let (wget, mut wget_wait) = held(s.submit(req("alpha", HoldKind::Exec, "/usr/bin/wget"), &settings(), t0()));
    let (beta, mut beta_wait) = held(s.submit(curl("beta"), &settings(), t0()));
    let (write, mut write_wait) = held(s.submit(req("alpha", HoldKind::Write, "/usr/bin/curl"), &settings(), t0()));

    let at = t0() + secs(5);
    let ten_min = secs(600);
    let r = s.decide(&id, approve_for(ten_min), ana(), at).unwrap();
    assert_eq!(
        (r.verdict, r.how, r.decided_by.clone(), r.decided_at),
        (Verdict::Allow, How::For(ten_min), Some(ana()), at)
    );
    assert_eq!(wait.try_recv().unwrap(), r);
    let s2 = same.try_recv().unwrap();
    assert_eq!(
        (s2.verdict, s2.how, s2.decided_by, s2.decided_at),
        (Verdict::Allow, How::For(ten_min), Some(ana()), at)
    );
    assert!(s2.reason.contains(&id), "{}", s2.reason);

    // A different target, identity or kind is a different request.
    for w in [&mut wget_wait, &mut beta_wait, &mut write_wait] {
        assert_eq!(w.try_recv(), Err(oneshot::error::TryRecvError::Empty));
    }
    let mut left: Vec<String> = s.pending().into_iter().map(|p| p.id).collect();
    left.sort();
    let mut expected = vec![wget, beta, write];
    expected.sort();
    assert_eq!(left, expected);

    let grants = s.grants(at);
    assert_eq!(grants.len(), 1);
    let g = &grants[0];
    assert_eq!(
        (g.identity.as_str(), g.identity_id, g.kind, g.target.as_str(), g.until, &g.granted_by),
        ("alpha", 1, HoldKind::Exec, "/usr/bin/curl", at + ten_min, &ana())
    );

    // Repeats are allowed without asking, and do not count as held.
    for n in 0..50 {
        let r = decided(s.submit(curl("alpha"), &settings(), at + secs(n)));
        assert_eq!((r.verdict, r.how, r.decided_by), (Verdict::Allow, How::Grant, Some(ana())));
        assert_eq!(r.decided_at, at + secs(n));
    }
    let just_before = at + ten_min - Duration::from_nanos(1);
    assert_eq!(decided(s.submit(curl("alpha"), &settings(), just_before)).how, How::Grant);
    held(s.submit(curl("beta"), &settings(), at));
    held(s.submit(req("alpha", HoldKind::Exec, "/usr/bin/curl2"), &settings(), at));
    held(s.submit(req("alpha", HoldKind::Connect, "/usr/bin/curl"), &settings(), at));
    // Same name, different identity (a deleted and recreated one): not covered.
    let mut recreated = curl("alpha");
    recreated.identity_id = 77;
    held(s.submit(recreated, &settings(), at));

    // When it ends, the same request is held again.
    let end = at + ten_min;
    assert!(s.grants(end).is_empty());
    held(s.submit(curl("alpha"), &settings(), end));
    s.expire(end);
    assert!(s.grants(just_before).is_empty(), "expire forgets ended grants");
}

#[test]
fn approve_for_must_be_between_zero_and_a_day() {
    let mut s = HoldService::default();
    let (id, mut wait) = held(s.submit(curl("alpha"), &settings(), t0()));
    for bad in [Duration::ZERO, MAX_GRANT + Duration::from_nanos(1), secs(7 * 24 * 3600)] {
        match s.decide(&id, approve_for(bad), ana(), t0()) {
            Err(HoldError::Invalid(msg)) => assert!(msg.contains("--for"), "{msg}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // A refused --for leaves the hold as it was.
    assert_eq!(wait.try_recv(), Err(oneshot::error::TryRecvError::Empty));
    assert!(s.get(&id).is_some());
    assert_eq!(s.decide(&id, approve_for(MAX_GRANT), ana(), t0()).unwrap().how, How::For(MAX_GRANT));
}

#[test]
fn deny_carries_the_reason_and_a_second_decision_is_not_found() {
    let mut s = HoldService::default();
    let (id, mut wait) = held(s.submit(curl("alpha"), &settings(), t0()));
    let at = t0() + secs(3);
    let r = s.decide(&id, deny("no network tools today"), ana(), at).unwrap();
    assert_eq!(
        r,
        Resolution {
            verdict: Verdict::Deny,
            how: How::Once,
            decided_by: Some(ana()),
            decided_at: at,
            reason: "no network tools today".to_string(),
        }
    );
    assert_eq!(wait.try_recv().unwrap(), r);
    assert!(s.pending().is_empty());

    for d in [approve_once(), deny("again"), approve_for(secs(60))] {
        let err = s.decide(&id, d, ana(), at).unwrap_err();
        assert_eq!(err, HoldError::NotFound(id.clone()));
        assert!(err.to_string().contains("agentctl approvals list"), "{err}");
    }
    assert!(matches!(s.decide("00000000", approve_once(), ana(), at), Err(HoldError::NotFound(_))));
    // A denial grants nothing.
    held(s.submit(curl("alpha"), &settings(), at));
}

#[test]
fn ids_are_matched_whatever_their_case_and_spacing() {
    let mut s = HoldService::default();
    let (id, _wait) = held(s.submit(curl("alpha"), &settings(), t0()));
    let typed = format!(" {} ", id.to_ascii_uppercase());
    assert!(s.get(&typed).is_some());
    assert_eq!(s.decide(&typed, approve_once(), ana(), t0()).unwrap().verdict, Verdict::Allow);
}

#[test]
fn the_deadline_applies_on_timeout_exactly_at_it() {
    for (on_timeout, verdict) in [(ActionKind::Deny, Verdict::Deny), (ActionKind::Allow, Verdict::Allow)] {
        let mut s = HoldService::default();
        let cfg = Approvals { timeout: secs(30), on_timeout, max_pending: 8 };
        let (late, mut late_wait) = held(s.submit(curl("alpha"), &cfg, t0() + secs(10)));
        let (id, mut wait) = held(s.submit(curl("alpha"), &cfg, t0()));
        let deadline = t0() + secs(30);
        assert_eq!(s.next_deadline(), Some(deadline));
        assert_eq!(s.get(&id).unwrap().deadline, deadline);
        assert_eq!(s.get(&id).unwrap().on_timeout, verdict);

        assert!(s.expire(deadline - Duration::from_nanos(1)).is_empty());
        assert_eq!(wait.try_recv(), Err(oneshot::error::TryRecvError::Empty));

        let out = s.expire(deadline);
        assert_eq!(out.len(), 1);
        let (got, r) = &out[0];
        assert_eq!(got, &id);
        assert_eq!((r.verdict, r.how, &r.decided_by, r.decided_at), (verdict, How::Timeout, &None, deadline));
        assert!(r.reason.contains("30s") && r.reason.contains(verdict.as_str()), "{}", r.reason);
        assert_eq!(&wait.try_recv().unwrap(), r);
        assert_eq!(late_wait.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        assert_eq!(s.next_deadline(), Some(t0() + secs(40)));

        // Past the deadline works the same, and then nothing is left to wake for.
        let out = s.expire(t0() + secs(100));
        assert_eq!(out.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>(), [late.as_str()]);
        assert_eq!(late_wait.try_recv().unwrap().verdict, verdict);
        assert_eq!(s.next_deadline(), None);
        assert!(matches!(s.decide(&id, approve_once(), ana(), deadline), Err(HoldError::NotFound(_))));
    }
}

#[test]
fn next_deadline_is_the_earliest_across_settings() {
    let mut s = HoldService::default();
    assert_eq!(s.next_deadline(), None);
    let long = Approvals { timeout: secs(300), ..settings() };
    let short = Approvals { timeout: secs(5), ..settings() };
    held(s.submit(curl("alpha"), &long, t0()));
    let (early, _w) = held(s.submit(curl("beta"), &short, t0() + secs(10)));
    held(s.submit(curl("gamma"), &settings(), t0()));
    assert_eq!(s.next_deadline(), Some(t0() + secs(15)));
    s.decide(&early, deny(""), ana(), t0() + secs(11)).unwrap();
    assert_eq!(s.next_deadline(), Some(t0() + secs(60)));
}

#[test]
fn over_max_pending_the_identity_is_denied_without_asking_and_others_are_not() {
    let mut s = HoldService::default();
    let cfg = Approvals { max_pending: 2, ..settings() };
    let (first, _w1) = held(s.submit(curl("alpha"), &cfg, t0()));
    let _w2 = held(s.submit(req("alpha", HoldKind::Write, "/tmp/x"), &cfg, t0()));
    let r = decided(s.submit(req("alpha", HoldKind::Connect, "10.0.0.1:443"), &cfg, t0()));
    assert_eq!((r.verdict, r.how, &r.decided_by, r.decided_at), (Verdict::Deny, How::Cap, &None, t0()));
    assert!(r.reason.contains("max_pending") && r.reason.contains('2'), "{}", r.reason);
    // The cap is per identity.
    held(s.submit(curl("beta"), &cfg, t0()));
    assert_eq!(s.pending().len(), 3);
    // Once one is decided there is room again.
    s.decide(&first, approve_once(), ana(), t0()).unwrap();
    held(s.submit(curl("alpha"), &cfg, t0()));
}

#[test]
fn the_31st_hold_in_a_minute_is_rate_limited_until_the_window_passes() {
    let mut s = HoldService::default();
    assert_eq!(s.rate_limit, RateLimit { max: 30, per: secs(60) });
    let mut ids = Vec::new();
    for n in 0..30 {
        let (id, _) = held(s.submit(curl("alpha"), &uncapped(), t0() + secs(n)));
        ids.push(id);
    }
    // Deciding them does not give the approver a break: the limit is on asking.
    for id in &ids {
        s.decide(id, deny("no"), ana(), t0() + secs(30)).unwrap();
    }
    let r = decided(s.submit(curl("alpha"), &uncapped(), t0() + secs(30)));
    assert_eq!((r.verdict, r.how, &r.decided_by), (Verdict::Deny, How::RateLimit, &None));
    assert!(r.reason.contains("30 times") && r.reason.contains("1m"), "{}", r.reason);
    // Rate-limited requests do not count, or one flood would lock it out for good.
    for n in 31..60 {
        assert_eq!(decided(s.submit(curl("alpha"), &uncapped(), t0() + secs(n))).how, How::RateLimit);
    }
    // Another identity is not affected.
    held(s.submit(curl("beta"), &uncapped(), t0() + secs(30)));

    // A minute after the first hold, one more fits; then the limit holds again.
    let later = t0() + secs(60);
    held(s.submit(curl("alpha"), &uncapped(), later));
    assert_eq!(decided(s.submit(curl("alpha"), &uncapped(), later)).how, How::RateLimit);
    // Well past the window, holds work freely again.
    let much_later = t0() + secs(200);
    s.expire(much_later);
    for n in 0..30 {
        held(s.submit(curl("alpha"), &uncapped(), much_later + Duration::from_millis(n)));
    }
}

#[test]
fn requests_answered_by_a_grant_do_not_count_towards_the_rate_limit() {
    let mut s = HoldService::new(RateLimit { max: 2, per: secs(60) });
    let (id, _) = held(s.submit(curl("alpha"), &uncapped(), t0()));
    s.decide(&id, approve_for(secs(600)), ana(), t0()).unwrap();
    for _ in 0..10 {
        assert_eq!(decided(s.submit(curl("alpha"), &uncapped(), t0())).how, How::Grant);
    }
    held(s.submit(req("alpha", HoldKind::Exec, "/bin/sh"), &uncapped(), t0()));
    assert_eq!(decided(s.submit(req("alpha", HoldKind::Exec, "/bin/ls"), &uncapped(), t0())).how, How::RateLimit);
}

#[test]
fn a_hundred_holds_across_four_identities_each_get_their_own_answer() {
    let mut s = HoldService::default();
    let identities = ["alpha", "beta", "gamma", "delta"];
    let mut waiting = Vec::new();
    for n in 0..100u64 {
        let identity = identities[(n % 4) as usize];
        // Distinct targets, so an `approve --for` covers exactly its own item.
        let r = req(identity, HoldKind::Exec, &format!("/usr/bin/tool-{n}"));
        let (id, wait) = held(s.submit(r.clone(), &uncapped(), t0() + Duration::from_millis(n)));
        waiting.push((n, id, r, wait));
    }
    let ids: std::collections::HashSet<&String> = waiting.iter().map(|w| &w.1).collect();
    assert_eq!(ids.len(), 100);
    assert_eq!(s.pending().len(), 100);

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    waiting.shuffle(&mut rng);
    let mut expected = Vec::new();
    for (step, (n, id, _, _)) in waiting.iter().enumerate() {
        let at = t0() + secs(1) + Duration::from_millis(step as u64);
        let decision = match n % 3 {
            0 => approve_once(),
            1 => deny(&format!("no to {n}")),
            _ => approve_for(secs(60 + n)),
        };
        let by = Decider { uid: 1000 + *n as u32, name: format!("user{n}") };
        expected.push(s.decide(id, decision, by, at).unwrap());
    }
    assert!(s.pending().is_empty());
    for ((n, _, _, wait), expected) in waiting.iter_mut().zip(expected) {
        let n = *n;
        let got = wait.try_recv().unwrap();
        assert_eq!(got, expected);
        assert_eq!(got.decided_by.as_ref().unwrap().uid, 1000 + n as u32);
        match n % 3 {
            0 => assert_eq!((got.verdict, got.how), (Verdict::Allow, How::Once)),
            1 => assert_eq!((got.verdict, got.reason), (Verdict::Deny, format!("no to {n}"))),
            _ => assert_eq!((got.verdict, got.how), (Verdict::Allow, How::For(secs(60 + n)))),
        }
    }
}

#[test]
fn subscribers_see_each_hold_then_its_resolution() {
    let mut s = HoldService::default();
    let mut events = s.subscribe();
    let (id, _wait) = held(s.submit(curl("alpha"), &settings(), t0()));
    match events.try_recv().unwrap() {
        HoldEvent::Pending(p) => {
            assert_eq!(p.id, id);
            assert_eq!(p.request, curl("alpha"));
        }
        other => panic!("{other:?}"),
    }
    // Answers without a hold are not holds.
    let capped = Approvals { max_pending: 1, ..settings() };
    decided(s.submit(curl("alpha"), &capped, t0()));
    assert_eq!(events.try_recv().unwrap_err(), TryRecvError::Empty);

    let r = s.decide(&id, deny("because"), ana(), t0() + secs(1)).unwrap();
    assert_eq!(
        events.try_recv().unwrap(),
        HoldEvent::Resolved { id: id.clone(), request: curl("alpha"), resolution: r }
    );

    // Timeouts, grants that cover other holds and shutdown are resolutions too.
    let (a, _) = held(s.submit(curl("alpha"), &settings(), t0()));
    let (b, _) = held(s.submit(curl("alpha"), &settings(), t0() + secs(1)));
    let (c, _) = held(s.submit(curl("beta"), &settings(), t0()));
    let (d, _) = held(s.submit(curl("gamma"), &settings(), t0()));
    s.decide(&a, approve_for(secs(60)), ana(), t0() + secs(2)).unwrap();
    s.expire(t0() + secs(60));
    held(s.submit(curl("delta"), &settings(), t0() + secs(61)));
    let stopped = s.cancel_all(t0() + secs(62));
    assert_eq!(stopped.len(), 1);
    assert_eq!((stopped[0].1.verdict, stopped[0].1.how), (Verdict::Deny, How::Shutdown));

    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(match e {
            HoldEvent::Pending(p) => format!("pending {}", p.id),
            HoldEvent::Resolved { id, resolution, .. } => format!("resolved {id} {}", resolution.how),
        });
    }
    let delta = &stopped[0].0;
    assert_eq!(
        seen[..6],
        [
            format!("pending {a}"),
            format!("pending {b}"),
            format!("pending {c}"),
            format!("pending {d}"),
            format!("resolved {a} for 1m"),
            format!("resolved {b} for 1m"),
        ]
    );
    let mut rest = seen[6..8].to_vec();
    rest.sort();
    let mut want = vec![format!("resolved {c} timeout"), format!("resolved {d} timeout")];
    want.sort();
    assert_eq!(rest, want);
    assert_eq!(seen[8..], [format!("pending {delta}"), format!("resolved {delta} shutdown")]);
}

#[test]
fn gone_subscribers_and_gone_waiters_do_not_break_decisions() {
    let mut s = HoldService::default();
    let dropped = s.subscribe();
    drop(dropped);
    // One that never reads, far beyond its buffer.
    let mut slow = s.subscribe();
    let (id, wait) = held(s.submit(curl("alpha"), &uncapped(), t0()));
    drop(wait);
    let r = s.decide(&id, approve_once(), ana(), t0()).unwrap();
    assert_eq!(r.verdict, Verdict::Allow);

    let mut s = HoldService::new(RateLimit { max: u32::MAX, per: secs(60) });
    let mut slow2 = s.subscribe();
    for n in 0..(EVENT_CAPACITY as u64 + 10) {
        let (id, wait) = held(s.submit(curl("alpha"), &uncapped(), t0() + Duration::from_micros(n)));
        drop(wait);
        s.decide(&id, deny("no"), ana(), t0()).unwrap();
    }
    assert!(matches!(slow2.try_recv(), Err(TryRecvError::Lagged(_))));
    // It can carry on from where the buffer starts.
    assert!(slow2.try_recv().is_ok());
    // The first service's slow subscriber still has its two events.
    assert!(matches!(slow.try_recv(), Ok(HoldEvent::Pending(_))));
    assert!(matches!(slow.try_recv(), Ok(HoldEvent::Resolved { .. })));

    // Expiry and shutdown with nobody waiting are fine too.
    let (_, w) = held(s.submit(curl("beta"), &settings(), t0()));
    drop(w);
    assert_eq!(s.expire(t0() + secs(60)).len(), 1);
    let (_, w) = held(s.submit(curl("beta"), &settings(), t0()));
    drop(w);
    assert_eq!(s.cancel_all(t0()).len(), 1);
}

#[test]
fn dropping_the_service_leaves_waiters_to_deny() {
    let mut s = HoldService::default();
    let (_, mut wait) = held(s.submit(curl("alpha"), &settings(), t0()));
    drop(s);
    assert_eq!(wait.try_recv(), Err(oneshot::error::TryRecvError::Closed));
}

#[tokio::test]
async fn a_waiting_task_gets_its_answer() {
    let mut s = HoldService::default();
    let (id, wait) = held(s.submit(curl("alpha"), &settings(), t0()));
    let task = tokio::spawn(wait);
    let r = s.decide(&id, approve_once(), ana(), t0()).unwrap();
    assert_eq!(task.await.unwrap().unwrap(), r);
}

#[test]
fn json_has_stable_snake_case_fields_and_rfc3339_times() {
    let mut s = HoldService::default();
    let (id, _) = held(s.submit(curl("alpha"), &settings(), t0()));
    let p = serde_json::to_value(s.get(&id).unwrap()).unwrap();
    assert_eq!(p["id"], id.as_str());
    assert_eq!(p["identity"], "alpha");
    assert_eq!(p["identity_id"], 1);
    assert_eq!(p["kind"], "exec");
    assert_eq!(p["target"], "/usr/bin/curl");
    assert_eq!(p["argv"][1], "--version");
    assert_eq!(p["cgroup_path"], "/sys/fs/cgroup/agents/alpha");
    assert_eq!(p["policy_version"], 3);
    assert_eq!(p["created_at"], "2025-01-01T00:00:00Z");
    assert_eq!(p["deadline"], "2025-01-01T00:01:00Z");
    assert_eq!(p["on_timeout"], "deny");

    let r = s.decide(&id, approve_for(secs(600)), ana(), t0()).unwrap();
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(
        j,
        serde_json::json!({
            "verdict": "allow", "how": "for", "for_secs": 600,
            "decided_by": {"uid": 1000, "name": "ana"},
            "decided_at": "2025-01-01T00:00:00Z",
            "reason": "approved until 2025-01-01T00:10:00Z",
        })
    );
    let g = serde_json::to_value(&s.grants(t0())[0]).unwrap();
    assert_eq!(g["until"], "2025-01-01T00:10:00Z");
    assert_eq!(g["granted_by"]["name"], "ana");

    let e = serde_json::to_value(HoldEvent::Resolved { id: "x".into(), request: curl("beta"), resolution: r }).unwrap();
    assert_eq!(e["event"], "resolved");
    assert_eq!(e["request"]["identity"], "beta");
    assert_eq!(e["resolution"]["how"], "for");

    // Times the format cannot show are clamped, not a panic.
    let odd = Resolution { decided_at: UNIX_EPOCH - secs(1), ..decided(s.submit(curl("alpha"), &settings(), t0())) };
    assert_eq!(serde_json::to_value(&odd).unwrap()["decided_at"], "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(UNIX_EPOCH + secs(300_000_000_000)), "9999-12-31T23:59:59Z");
}

#[test]
fn how_and_decider_read_well() {
    assert_eq!(How::For(secs(600)).to_string(), "for 10m");
    assert_eq!(How::RateLimit.to_string(), "rate_limit");
    assert_eq!(ana().to_string(), "ana (uid 1000)");
    assert_eq!(Decider { uid: 0, name: String::new() }.to_string(), "uid 0");
    assert_eq!(HoldKind::Connect.as_str(), "connect");
}
