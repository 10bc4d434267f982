//! Agent identities: a name, a numeric id for the kernel maps, an Ed25519 key pair,
//! the human or service the agent acts for, its policy, an optional expiry and a
//! revoked flag. A revoked or expired identity is denied everything in the kernel,
//! at once, in every cgroup bound to it.
#![forbid(unsafe_code)]

pub mod keys;

use std::{collections::BTreeMap, time::SystemTime};

use serde::{Deserialize, Serialize};

/// What agentd remembers about one identity (`identities/<name>.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRecord {
    pub name: String,
    /// Numeric id in kernel maps and events. Allocated once, never reused, so an
    /// old event or receipt can never be attributed to a newer identity.
    pub id: u32,
    /// Name of the policy it runs under.
    pub policy: String,
    /// Who the agent acts for.
    pub owner: String,
    /// RFC 3339.
    pub created_at: String,
    /// Hex Ed25519 public key (the private key is in `keys/<name>.key`, unless
    /// `external_key`).
    pub public_key: String,
    /// The key was given (`--public-key`): its private half is the caller's, and
    /// agentd never had it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external_key: bool,
    #[serde(default)]
    pub revoked: bool,
    /// RFC 3339; after it the identity is denied everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Free-form `key=value` labels (team, ticket, environment...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Who revoked it (a user name, from the caller's uid), when (RFC 3339) and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_reason: Option<String>,
}

/// What `identity create` asks for.
#[derive(Clone, Debug, Default)]
pub struct NewIdentity {
    pub name: String,
    pub policy: String,
    pub owner: String,
    /// A public key the caller holds the private half of; `None`: agentd makes a
    /// key pair and keeps the private key (0600) in its state directory.
    pub public_key: Option<ed25519_dalek::VerifyingKey>,
    pub expires: Option<SystemTime>,
    pub labels: BTreeMap<String, String>,
}

impl NewIdentity {
    pub fn new(name: &str, policy: &str, owner: &str) -> NewIdentity {
        NewIdentity { name: name.into(), policy: policy.into(), owner: owner.into(), ..Default::default() }
    }
}

/// Checks one label: a key of 1 to 63 characters from `a-z A-Z 0-9 . _ / -`
/// starting with a letter or digit, and a value of at most 256 printable characters.
pub fn validate_label(key: &str, value: &str) -> Result<(), String> {
    let kb = key.as_bytes();
    let key_ok = !kb.is_empty()
        && kb.len() <= 63
        && kb[0].is_ascii_alphanumeric()
        && kb.iter().all(|c| c.is_ascii_alphanumeric() || b"._/-".contains(c));
    if !key_ok {
        return Err(format!(
            "label key {key:?} is not valid: use 1 to 63 letters, digits, '.', '_', '/' and '-', starting with a letter or digit (e.g. team=platform)"
        ));
    }
    if value.chars().count() > 256 || value.chars().any(char::is_control) {
        return Err(format!("label {key}: the value must be at most 256 characters, without control characters"));
    }
    Ok(())
}

/// Parses `KEY=VALUE` (the CLI's `--label`).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("label {s:?} is not KEY=VALUE (e.g. --label team=platform)"))?;
    validate_label(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

/// Parses `--expires`: a duration from `now` (`90s`, `10m`, `8h`, `30d`, `1h 30m`)
/// or an RFC 3339 time (`2026-12-31T23:00:00Z`). It must be in the future.
pub fn parse_expiry(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    let s = s.trim();
    let at = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => match humantime::parse_duration(s) {
            Ok(d) => now + d,
            Err(_) => {
                return Err(format!(
                    "--expires {s:?} is neither a duration (90s, 10m, 8h, 30d) nor an RFC 3339 time (2026-12-31T23:00:00Z)"
                ))
            }
        },
    };
    if at <= now {
        return Err(format!("--expires {s:?} is not in the future"));
    }
    Ok(at)
}

/// What an identity can do right now, as `agentctl identity list` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityState {
    /// Its policy is in force.
    Active,
    /// Revoked: everything is denied.
    Revoked,
    /// Past its expiry: everything is denied.
    Expired,
    /// Its policy is missing or does not compile: everything is denied.
    NoPolicy,
}

impl IdentityState {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityState::Active => "active",
            IdentityState::Revoked => "revoked",
            IdentityState::Expired => "expired",
            IdentityState::NoPolicy => "no-policy",
        }
    }
}

impl IdentityRecord {
    /// True once `now` is at or past the expiry. An expiry that does not parse
    /// counts as expired: deny rather than guess.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        match &self.expires {
            None => false,
            Some(t) => humantime::parse_rfc3339_weak(t).map(|t| now >= t).unwrap_or(true),
        }
    }

    /// The expiry as a time (`None`: never, or unparseable, which `is_expired`
    /// already treats as expired).
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t).ok())
    }

    /// Revoked or expired: the kernel must deny everything it does.
    pub fn denies_all(&self, now: SystemTime) -> bool {
        self.revoked || self.is_expired(now)
    }

    /// The state, given whether its policy is compiled and installed.
    pub fn state(&self, now: SystemTime, has_policy: bool) -> IdentityState {
        if self.revoked {
            IdentityState::Revoked
        } else if self.is_expired(now) {
            IdentityState::Expired
        } else if !has_policy {
            IdentityState::NoPolicy
        } else {
            IdentityState::Active
        }
    }

    /// The public key's fingerprint (empty if the stored key is malformed).
    pub fn fingerprint(&self) -> String {
        keys::fingerprint_hex(&self.public_key)
    }
}

/// Checks an identity or policy name: 1 to 63 lowercase letters, digits and `-`,
/// starting with a letter or digit (the same rule as policy `metadata.name`, and
/// safe as a file name). `what` is "identity" or "policy", for the message.
pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} name {name:?} is not valid: use 1 to 63 lowercase letters, digits and '-', starting with a letter or digit (e.g. \"claude-code\")"
        ))
    }
}

/// The id for a new identity: one more than every id ever handed out (`high_water`
/// is the persisted "next id", which survives deletions), starting at 1. Id 0
/// means "no identity" in the kernel and is never used.
pub fn next_id(existing: impl IntoIterator<Item = u32>, high_water: u32) -> Option<u32> {
    let after_max = existing.into_iter().max().map_or(Some(1), |m| m.checked_add(1))?;
    Some(after_max.max(high_water).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rec() -> IdentityRecord {
        IdentityRecord {
            name: "coder".into(),
            id: 1,
            policy: "coding-agent".into(),
            owner: "alice".into(),
            created_at: "2025-01-01T00:00:00Z".into(),
            public_key: keys::public_hex(&keys::generate().verifying_key()),
            external_key: false,
            revoked: false,
            expires: None,
            labels: BTreeMap::new(),
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
        }
    }

    #[test]
    fn labels() {
        assert_eq!(parse_label("team=platform"), Ok(("team".into(), "platform".into())));
        assert_eq!(parse_label("app.kubernetes.io/name="), Ok(("app.kubernetes.io/name".into(), String::new())));
        for bad in ["team", "=x", "-a=b", "a b=c", &format!("{}=v", "k".repeat(64))] {
            assert!(parse_label(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_label("k=a b=c"), Ok(("k".into(), "a b=c".into())));
        assert!(parse_label("k=a\nb").is_err());
        assert!(parse_label("k=a\u{7}b").is_err());
        assert!(parse_label(&format!("k={}", "v".repeat(257))).is_err());
    }

    #[test]
    fn expiries() {
        let now = humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(parse_expiry("10m", now), Ok(now + Duration::from_secs(600)));
        assert_eq!(parse_expiry("1h 30m", now), Ok(now + Duration::from_secs(5400)));
        assert_eq!(parse_expiry("2026-01-02T00:00:00Z", now), Ok(now + Duration::from_secs(86400)));
        let e = parse_expiry("2025-12-31T00:00:00Z", now).unwrap_err();
        assert!(e.contains("not in the future"), "{e}");
        let e = parse_expiry("tomorrow", now).unwrap_err();
        assert!(e.contains("neither a duration"), "{e}");
    }

    #[test]
    fn names() {
        for ok in ["a", "claude-code", "0agent", &"x".repeat(63)] {
            assert!(validate_name("identity", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a/b", "..", "a.b", &"x".repeat(64)] {
            let e = validate_name("identity", bad).unwrap_err();
            assert!(e.contains("lowercase letters"), "{e}");
        }
    }

    #[test]
    fn ids_start_at_one_and_are_never_reused() {
        assert_eq!(next_id([], 0), Some(1));
        assert_eq!(next_id([], 1), Some(1));
        assert_eq!(next_id([1, 2, 3], 4), Some(4));
        // Identity 7 was deleted: its id stays retired.
        assert_eq!(next_id([1, 2], 8), Some(8));
        assert_eq!(next_id([9], 3), Some(10));
        assert_eq!(next_id([u32::MAX], 0), None);
    }

    #[test]
    fn states() {
        let now = SystemTime::now();
        let mut r = rec();
        assert_eq!(r.state(now, true), IdentityState::Active);
        assert_eq!(r.state(now, false), IdentityState::NoPolicy);
        r.expires = Some(humantime::format_rfc3339_seconds(now - Duration::from_secs(60)).to_string());
        assert_eq!(r.state(now, true), IdentityState::Expired);
        assert!(r.denies_all(now));
        r.expires = Some(humantime::format_rfc3339_seconds(now + Duration::from_secs(3600)).to_string());
        assert_eq!(r.state(now, true), IdentityState::Active);
        r.expires = Some("next tuesday".into());
        assert!(r.is_expired(now), "an unreadable expiry fails closed");
        r.expires = None;
        r.revoked = true;
        assert_eq!(r.state(now, true).as_str(), "revoked");
        // A revoked identity stays revoked when its expiry passes too.
        r.expires = Some(humantime::format_rfc3339_seconds(now - Duration::from_secs(60)).to_string());
        assert_eq!(r.state(now, true), IdentityState::Revoked);
        assert_eq!(r.fingerprint().len(), 16);
    }
}
