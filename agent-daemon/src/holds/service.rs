//! The hold service: pending approvals, decisions, grants, deadlines, the
//! per-identity cap and rate limit, and the event stream that follows them.
//!
//! Identities are matched by both their numeric id and their name. Ids are never
//! reused, so a grant, a cap or a rate window can never carry over to a later
//! identity that happens to get the same name.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rand::RngCore;
use serde::{Serialize, Serializer};
use tokio::sync::{broadcast, oneshot};

use crate::policy::{ActionKind, Approvals};

#[cfg(test)]
mod tests;

/// The longest `approve --for`: a grant lets an agent repeat an action with nobody
/// looking, so it should end within a working day.
pub const MAX_GRANT: Duration = Duration::from_secs(24 * 60 * 60);

/// Events a subscriber may fall behind by before it loses the oldest ones. A slow
/// subscriber only ever loses events (it sees `Lagged`); it never holds up a decision.
const EVENT_CAPACITY: usize = 1024;

/// Attempts at a fresh random id before falling back to a counter.
const ID_ATTEMPTS: usize = 8;

/// What kind of action is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldKind {
    Exec,
    Write,
    Connect,
    /// A UDP send (target `ADDR:PORT`): stopped, then asked about.
    Udp,
}

impl HoldKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldKind::Exec => "exec",
            HoldKind::Write => "write",
            HoldKind::Connect => "connect",
            HoldKind::Udp => "udp",
        }
    }
}

impl fmt::Display for HoldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the kernel side knows about a held action, for the person deciding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HoldRequest {
    /// Identity name.
    pub identity: String,
    pub identity_id: u32,
    /// Who the agent acts for.
    pub owner: String,
    pub kind: HoldKind,
    /// An absolute path (exec, write) or `addr:port` (connect).
    pub target: String,
    /// The command line of an exec (may be empty).
    pub argv: Vec<String>,
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    /// The executable of the process that acts.
    pub executable: String,
    pub cgroup_path: String,
    /// Name of the policy whose rule said `ask`.
    pub policy: String,
    pub policy_version: u32,
    pub rule_id: u32,
    /// The rule, as written.
    pub rule: String,
    /// For receipts only (not shown to the person deciding): the identity's key
    /// fingerprint and the SHA-256 of the policy version that asked.
    #[serde(skip)]
    pub key_fingerprint: String,
    #[serde(skip)]
    pub policy_hash: String,
}

impl HoldRequest {
    fn identity_key(&self) -> IdentityKey {
        (self.identity_id, self.identity.clone())
    }

    fn grant_key(&self) -> GrantKey {
        (self.identity_id, self.identity.clone(), self.kind, self.target.clone())
    }

    pub fn same_action(&self, other: &HoldRequest) -> bool {
        self.identity_id == other.identity_id
            && self.identity == other.identity
            && self.kind == other.kind
            && self.target == other.target
    }
}

/// A held action waiting for a decision (one line of `agentctl approvals list`).
///
/// JSON: `id`, the request's fields inline, `on_timeout` (`allow`/`deny`), and
/// `created_at`/`deadline` as RFC 3339 (UTC, seconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pending {
    /// 8 lowercase hex digits, unique among the held actions.
    pub id: String,
    #[serde(flatten)]
    pub request: HoldRequest,
    #[serde(serialize_with = "ser_rfc3339")]
    pub created_at: SystemTime,
    /// When `on_timeout` applies if nobody has decided.
    #[serde(serialize_with = "ser_rfc3339")]
    pub deadline: SystemTime,
    /// What the deadline decides.
    pub on_timeout: Verdict,
}

impl Pending {
    pub fn created_at_rfc3339(&self) -> String {
        rfc3339(self.created_at)
    }

    pub fn deadline_rfc3339(&self) -> String {
        rfc3339(self.deadline)
    }
}

/// Whether the held action goes ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }

    /// `approvals.on_timeout`. Only an explicit `allow` allows: anything else the
    /// policy could carry there fails closed.
    fn on_timeout(kind: ActionKind) -> Verdict {
        match kind {
            ActionKind::Allow => Verdict::Allow,
            ActionKind::Audit | ActionKind::Ask | ActionKind::Deny => Verdict::Deny,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a verdict was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum How {
    /// A person decided this one action (`approve` or `deny`).
    Once,
    /// A person approved it and the same action for this long (`approve --for`).
    For(Duration),
    /// Nobody decided by the deadline: `approvals.on_timeout`.
    Timeout,
    /// The identity already had `approvals.max_pending` actions held: denied unasked.
    Cap,
    /// The identity asked too often: denied unasked, to spare the approver.
    RateLimit,
    /// Allowed without a hold by an earlier `approve --for`.
    Grant,
    /// The daemon is stopping: everything held is denied.
    Shutdown,
}

impl How {
    /// The name without the duration: `once`, `for`, `timeout`, `cap`,
    /// `rate_limit`, `grant`, `shutdown`.
    pub fn as_str(self) -> &'static str {
        match self {
            How::Once => "once",
            How::For(_) => "for",
            How::Timeout => "timeout",
            How::Cap => "cap",
            How::RateLimit => "rate_limit",
            How::Grant => "grant",
            How::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for How {
    /// `for 10m` for a grant, the plain name otherwise.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            How::For(d) => write!(f, "for {}", humantime::format_duration(*d)),
            other => f.write_str(other.as_str()),
        }
    }
}

/// The person who decided: the caller's uid, and its user name when known.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Decider {
    pub uid: u32,
    pub name: String,
}

impl fmt::Display for Decider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(f, "uid {}", self.uid)
        } else {
            write!(f, "{} (uid {})", self.name, self.uid)
        }
    }
}

/// The answer to one action.
///
/// JSON: `verdict`, `how` ([`How::as_str`]), `for_secs` (only for `for`),
/// `decided_by` (`{uid, name}` or null), `decided_at` (RFC 3339), `reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub verdict: Verdict,
    pub how: How,
    /// The person, for `Once`, `For` and `Grant` (who granted); none when agentd
    /// decided by itself.
    pub decided_by: Option<Decider>,
    pub decided_at: SystemTime,
    /// Why, in words: the denier's reason, or what agentd applied.
    pub reason: String,
}

impl Resolution {
    pub fn decided_at_rfc3339(&self) -> String {
        rfc3339(self.decided_at)
    }

    fn by_agentd(verdict: Verdict, how: How, now: SystemTime, reason: String) -> Resolution {
        Resolution { verdict, how, decided_by: None, decided_at: now, reason }
    }
}

impl Serialize for Resolution {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            verdict: Verdict,
            how: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            for_secs: Option<u64>,
            decided_by: &'a Option<Decider>,
            decided_at: String,
            reason: &'a str,
        }
        Json {
            verdict: self.verdict,
            how: self.how.as_str(),
            for_secs: match self.how {
                How::For(d) => Some(d.as_secs()),
                _ => None,
            },
            decided_by: &self.decided_by,
            decided_at: rfc3339(self.decided_at),
            reason: &self.reason,
        }
        .serialize(s)
    }
}

/// What a person decides about one held action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `approve ID`, or `approve ID --for D`: also allow the same identity the same
    /// action on the same target, without asking, for `D`.
    Approve { for_: Option<Duration> },
    /// `deny ID --reason R`.
    Deny { reason: String },
}

/// An `approve --for` in force: `identity` may do `kind` on `target` unasked
/// until `until`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub identity: String,
    pub identity_id: u32,
    pub kind: HoldKind,
    pub target: String,
    #[serde(serialize_with = "ser_rfc3339")]
    pub until: SystemTime,
    pub granted_by: Decider,
    #[serde(serialize_with = "ser_rfc3339")]
    pub granted_at: SystemTime,
}

impl Grant {
    pub fn until_rfc3339(&self) -> String {
        rfc3339(self.until)
    }

    fn live(&self, now: SystemTime) -> bool {
        now < self.until
    }
}

/// What [`HoldService::submit`] did with a request.
#[derive(Debug)]
pub enum Submitted {
    /// Answered at once, without a hold (grant, cap or rate limit).
    Decided(Resolution),
    /// Held as `id`. `wait` gets exactly one resolution. If it yields an error
    /// instead (the service was dropped with the action still held), the caller
    /// must deny.
    Held { id: String, wait: oneshot::Receiver<Resolution> },
}

/// What subscribers see: every hold, then its resolution.
///
/// JSON: `{"event": "pending", ...the Pending...}` or
/// `{"event": "resolved", "id", "request", "resolution"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HoldEvent {
    Pending(Pending),
    Resolved { id: String, request: HoldRequest, resolution: Resolution },
}

/// At most `max` new holds per identity in any window of `per`, against approval
/// fatigue: a person asked fifty times a minute stops reading and approves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub max: u32,
    pub per: Duration,
}

impl Default for RateLimit {
    /// 30 a minute: one every two seconds on average, more than a person can
    /// honestly judge.
    fn default() -> Self {
        RateLimit { max: 30, per: Duration::from_secs(60) }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HoldError {
    #[error(
        "no held action {0:?}: it was already decided, reached its deadline, or never existed; \
         `agentctl approvals list` shows what is waiting now"
    )]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
}

type IdentityKey = (u32, String);
type GrantKey = (u32, String, HoldKind, String);

/// A held action and where its answer goes.
struct Item {
    pending: Pending,
    /// The kernel side waiting. Sending fails only if it went away, which changes
    /// nothing here.
    answer: oneshot::Sender<Resolution>,
}

/// Called synchronously for every hold event (receipts).
type Recorder = Box<dyn Fn(&HoldEvent) + Send>;

/// Pending approvals, grants, and the limits on asking. See the module docs.
pub struct HoldService {
    /// Applies to every identity.
    pub rate_limit: RateLimit,
    items: HashMap<String, Item>,
    grants: HashMap<GrantKey, Grant>,
    /// When each identity's recent holds were made (oldest first), for the rate limit.
    recent: HashMap<IdentityKey, VecDeque<SystemTime>>,
    events: broadcast::Sender<HoldEvent>,
    /// Sees every event synchronously, before subscribers (the receipt journal:
    /// unlike a subscriber it cannot lag and lose one).
    recorder: Option<Recorder>,
    /// Ids when the OS RNG cannot give one.
    fallback_id: u32,
}

impl fmt::Debug for HoldService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HoldService")
            .field("rate_limit", &self.rate_limit)
            .field("pending", &self.items.len())
            .field("grants", &self.grants.len())
            .field("subscribers", &self.events.receiver_count())
            .finish()
    }
}

impl Default for HoldService {
    fn default() -> Self {
        HoldService::new(RateLimit::default())
    }
}

impl HoldService {
    pub fn new(rate_limit: RateLimit) -> HoldService {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        HoldService {
            rate_limit,
            items: HashMap::new(),
            grants: HashMap::new(),
            recent: HashMap::new(),
            events,
            recorder: None,
            fallback_id: 0,
        }
    }

    /// Calls `recorder` with every hold and resolution as it happens, under the
    /// service's lock (so it must be quick: the receipt journal only queues).
    pub fn set_recorder(&mut self, recorder: impl Fn(&HoldEvent) + Send + 'static) {
        self.recorder = Some(Box::new(recorder));
    }

    /// Takes an `ask` action. `settings` is the identity's policy's `approvals`.
    ///
    /// In order: a live grant for the same identity, kind and target allows it;
    /// an identity already at `max_pending` is denied; one over the rate limit is
    /// denied; anything else is held until [`decide`](Self::decide),
    /// [`expire`](Self::expire) or [`cancel_all`](Self::cancel_all).
    pub fn submit(&mut self, req: HoldRequest, settings: &Approvals, now: SystemTime) -> Submitted {
        if let Some(g) = self.grants.get(&req.grant_key()).filter(|g| g.live(now)) {
            let reason = format!(
                "{} {} was approved for {} until {} by {}",
                req.kind,
                req.target,
                req.identity,
                g.until_rfc3339(),
                g.granted_by
            );
            return Submitted::Decided(Resolution {
                verdict: Verdict::Allow,
                how: How::Grant,
                decided_by: Some(g.granted_by.clone()),
                decided_at: now,
                reason,
            });
        }

        let waiting = self.items.values().filter(|i| same_identity(&i.pending.request, &req)).count();
        if waiting >= usize::try_from(settings.max_pending).unwrap_or(usize::MAX) {
            let reason = format!(
                "{} already has {waiting} actions waiting for approval (approvals.max_pending: {}); \
                 denied without asking",
                req.identity, settings.max_pending
            );
            return Submitted::Decided(Resolution::by_agentd(Verdict::Deny, How::Cap, now, reason));
        }

        let limit = self.rate_limit;
        let recent = self.recent.entry(req.identity_key()).or_default();
        forget_older(recent, limit.per, now);
        if recent.len() >= usize::try_from(limit.max).unwrap_or(usize::MAX) {
            let reason = format!(
                "{} asked for approval {} times in the last {} (the limit, so the approver is not worn down); \
                 denied without asking",
                req.identity,
                recent.len(),
                humantime::format_duration(limit.per)
            );
            return Submitted::Decided(Resolution::by_agentd(Verdict::Deny, How::RateLimit, now, reason));
        }
        // Only holds count: the limit is on how often a person is asked.
        recent.push_back(now);

        let id = self.new_id();
        // A timeout too large for the clock cannot come from a parsed policy; were
        // it to, deciding at once by `on_timeout` is what the policy asked for.
        let deadline = now.checked_add(settings.timeout).unwrap_or(now);
        let pending = Pending {
            id: id.clone(),
            request: req,
            created_at: now,
            deadline,
            on_timeout: Verdict::on_timeout(settings.on_timeout),
        };
        let (answer, wait) = oneshot::channel();
        self.emit(HoldEvent::Pending(pending.clone()));
        self.items.insert(id.clone(), Item { pending, answer });
        Submitted::Held { id, wait }
    }

    /// A person's decision on held action `id` (case and surrounding spaces are
    /// ignored). Returns its resolution.
    ///
    /// `Approve { for_: Some(d) }` also grants the same identity the same kind of
    /// action on the same target until `now + d`, and resolves every other held
    /// action that is the same (identity, kind, target) with it.
    pub fn decide(
        &mut self,
        id: &str,
        decision: Decision,
        by: Decider,
        now: SystemTime,
    ) -> Result<Resolution, HoldError> {
        let id = id.trim().to_ascii_lowercase();
        // Checked before anything changes, so a bad `--for` leaves the hold waiting.
        let until = match &decision {
            Decision::Approve { for_: Some(d) } => Some(grant_until(*d, now)?),
            _ => None,
        };
        let item = self.items.remove(&id).ok_or_else(|| HoldError::NotFound(id.clone()))?;

        // Held actions that are the same as this one, resolved with it.
        let mut same = Vec::new();
        let resolution = match decision {
            Decision::Approve { for_: None } => Resolution {
                verdict: Verdict::Allow,
                how: How::Once,
                decided_by: Some(by),
                decided_at: now,
                reason: String::new(),
            },
            Decision::Approve { for_: Some(d) } => {
                let req = &item.pending.request;
                let until = until.unwrap_or(now);
                self.grants.insert(
                    req.grant_key(),
                    Grant {
                        identity: req.identity.clone(),
                        identity_id: req.identity_id,
                        kind: req.kind,
                        target: req.target.clone(),
                        until,
                        granted_by: by.clone(),
                        granted_at: now,
                    },
                );
                // The others are the same request, asked again while this one
                // waited: the person's answer covers them.
                let ids: Vec<String> = self
                    .items
                    .values()
                    .filter(|i| i.pending.request.same_action(req))
                    .map(|i| i.pending.id.clone())
                    .collect();
                same = ids.iter().filter_map(|i| self.items.remove(i)).collect();
                same.sort_by(|a: &Item, b: &Item| order(&a.pending, &b.pending));
                Resolution {
                    verdict: Verdict::Allow,
                    how: How::For(d),
                    decided_by: Some(by),
                    decided_at: now,
                    reason: format!("approved until {}", rfc3339(until)),
                }
            }
            Decision::Deny { reason } => {
                Resolution { verdict: Verdict::Deny, how: How::Once, decided_by: Some(by), decided_at: now, reason }
            }
        };
        self.finish(item, resolution.clone());
        for other in same {
            let reason = format!("{} (with {id})", resolution.reason);
            self.finish(other, Resolution { reason, ..resolution.clone() });
        }
        Ok(resolution)
    }

    /// Whether an action the same as `req` (identity, kind, target) is waiting.
    pub fn is_waiting(&self, req: &HoldRequest) -> bool {
        self.items.values().any(|i| i.pending.request.same_action(req))
    }

    /// Records a grant made outside [`HoldService::decide`]'s `--for` (an approved
    /// write request's exception), so that `approvals list` shows it and a repeat
    /// of the request is answered by it.
    pub fn add_grant(&mut self, req: &HoldRequest, until: SystemTime, by: Decider, now: SystemTime) {
        let g = Grant {
            identity: req.identity.clone(),
            identity_id: req.identity_id,
            kind: req.kind,
            target: req.target.clone(),
            until,
            granted_by: by,
            granted_at: now,
        };
        self.grants.insert(req.grant_key(), g);
    }

    /// Resolves every held action at or past its deadline by its `on_timeout`,
    /// earliest deadline first, and forgets grants that have ended.
    pub fn expire(&mut self, now: SystemTime) -> Vec<(String, Resolution)> {
        self.grants.retain(|_, g| g.live(now));
        let per = self.rate_limit.per;
        self.recent.retain(|_, times| {
            forget_older(times, per, now);
            !times.is_empty()
        });

        let mut due: Vec<&Pending> = self.items.values().map(|i| &i.pending).filter(|p| p.deadline <= now).collect();
        due.sort_by(|a, b| a.deadline.cmp(&b.deadline).then_with(|| order(a, b)));
        let due: Vec<String> = due.into_iter().map(|p| p.id.clone()).collect();
        let mut out = Vec::with_capacity(due.len());
        for id in due {
            let Some(item) = self.items.remove(&id) else { continue };
            let p = &item.pending;
            let waited = p.deadline.duration_since(p.created_at).unwrap_or_default();
            let reason = format!(
                "nobody decided within {}; approvals.on_timeout is {}",
                humantime::format_duration(waited),
                p.on_timeout
            );
            let r = Resolution::by_agentd(p.on_timeout, How::Timeout, now, reason);
            self.finish(item, r.clone());
            out.push((id, r));
        }
        out
    }

    /// The earliest deadline of the held actions, for the timer that calls
    /// [`expire`](Self::expire).
    pub fn next_deadline(&self) -> Option<SystemTime> {
        self.items.values().map(|i| i.pending.deadline).min()
    }

    /// Denies everything held (the daemon is stopping), oldest first.
    pub fn cancel_all(&mut self, now: SystemTime) -> Vec<(String, Resolution)> {
        let mut items: Vec<Item> = self.items.drain().map(|(_, i)| i).collect();
        items.sort_by(|a, b| order(&a.pending, &b.pending));
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let r = Resolution::by_agentd(
                Verdict::Deny,
                How::Shutdown,
                now,
                "agentd is stopping; held actions are denied".to_string(),
            );
            out.push((item.pending.id.clone(), r.clone()));
            self.finish(item, r);
        }
        out
    }

    /// The held actions, oldest first.
    pub fn pending(&self) -> Vec<Pending> {
        let mut all: Vec<Pending> = self.items.values().map(|i| i.pending.clone()).collect();
        all.sort_by(order);
        all
    }

    /// Held action `id` (case and surrounding spaces are ignored).
    pub fn get(&self, id: &str) -> Option<&Pending> {
        self.items.get(&id.trim().to_ascii_lowercase()).map(|i| &i.pending)
    }

    /// The grants in force at `now`, by identity, kind and target.
    pub fn grants(&self, now: SystemTime) -> Vec<Grant> {
        let mut all: Vec<Grant> = self.grants.values().filter(|g| g.live(now)).cloned().collect();
        all.sort_by(|a, b| {
            (&a.identity, a.identity_id, a.kind, &a.target).cmp(&(&b.identity, b.identity_id, b.kind, &b.target))
        });
        all
    }

    /// Follows holds and resolutions from now on. A subscriber that falls more
    /// than a thousand events behind loses the oldest (`RecvError::Lagged`).
    pub fn subscribe(&mut self) -> broadcast::Receiver<HoldEvent> {
        self.events.subscribe()
    }

    /// Answers the waiting action and tells subscribers.
    fn finish(&mut self, item: Item, resolution: Resolution) {
        // The receiver is gone only if the kernel side stopped waiting (its
        // process died, or its task ended); there is nobody left to answer.
        let _ = item.answer.send(resolution.clone());
        let Pending { id, request, .. } = item.pending;
        self.emit(HoldEvent::Resolved { id, request, resolution });
    }

    fn emit(&self, event: HoldEvent) {
        if let Some(r) = &self.recorder {
            r(&event);
        }
        // Fails only with no subscriber; a slow one lags instead of blocking.
        let _ = self.events.send(event);
    }

    /// 8 hex digits from the OS RNG, unique among the held actions. Random rather
    /// than sequential so an id in an old message or script cannot approve a
    /// later action by chance.
    fn new_id(&mut self) -> String {
        let mut rng = rand::rngs::OsRng;
        for _ in 0..ID_ATTEMPTS {
            let mut bytes = [0u8; 4];
            if rng.try_fill_bytes(&mut bytes).is_err() {
                break;
            }
            let id = hex::encode(bytes);
            if !self.items.contains_key(&id) {
                return id;
            }
        }
        // Without the RNG, a counter still keeps ids unique; there are always
        // fewer held actions than ids, so this ends.
        loop {
            self.fallback_id = self.fallback_id.wrapping_add(1);
            let id = format!("{:08x}", self.fallback_id);
            if !self.items.contains_key(&id) {
                return id;
            }
        }
    }
}

fn same_identity(a: &HoldRequest, b: &HoldRequest) -> bool {
    a.identity_id == b.identity_id && a.identity == b.identity
}

/// Oldest first; the id breaks ties so the order is stable.
fn order(a: &Pending, b: &Pending) -> std::cmp::Ordering {
    a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id))
}

/// Drops the times that are `per` or more before `now`. A time after `now` (the
/// clock went back) stays: when in doubt, count it.
fn forget_older(times: &mut VecDeque<SystemTime>, per: Duration, now: SystemTime) {
    while let Some(&t) = times.front() {
        match now.duration_since(t) {
            Ok(age) if age >= per => {
                times.pop_front();
            }
            _ => break,
        }
    }
}

/// The end of an `approve --for d` given at `now`.
fn grant_until(d: Duration, now: SystemTime) -> Result<SystemTime, HoldError> {
    if d.is_zero() {
        return Err(HoldError::Invalid(
            "approve --for needs a duration longer than zero; to approve just this action, leave out --for".into(),
        ));
    }
    if d > MAX_GRANT {
        return Err(HoldError::Invalid(format!(
            "approve --for {} is longer than the {} allowed; approve again when it ends",
            humantime::format_duration(d),
            humantime::format_duration(MAX_GRANT)
        )));
    }
    now.checked_add(d).ok_or_else(|| HoldError::Invalid("approve --for: the clock cannot represent its end".into()))
}

/// RFC 3339, UTC, seconds. Clamped to what the format can show (1970 to 9999)
/// rather than failing, since only display depends on it.
fn rfc3339(t: SystemTime) -> String {
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default().min(LAST);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + since).to_string()
}

fn ser_rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}
