//! The `sinks:` section of agentd's configuration: read as written ([`SinksConfig`]),
//! then checked once into what the dispatcher runs ([`SinkSpec`]), so that every
//! mistake is reported at start-up with the sink it is in and what to do about it.
//!
//! ```yaml
//! sinks:
//!   - type: jsonl
//!     path: /var/log/agentd/receipts.jsonl
//!   - type: syslog
//!     address: 127.0.0.1:514
//!     transport: tcp            # or udp (the default)
//!     app_name: agentd
//!     facility: auth
//!     min_severity: notice
//!   - type: hec
//!     url: http://splunk.example:8088/services/collector/event
//!     token_file: /etc/agentd/hec-token
//!     batch_max: 100
//!     min_severity: warning
//! ```
//!
//! Every sink also takes `min_severity` (default `info`), `queue_max` (records waiting,
//! default 10000), `batch_max` (records per delivery, default 100), `retry_base` and
//! `retry_cap` (the backoff, default `500ms` doubling up to `30s`) and `max_attempts`
//! (deliveries of one batch before it is dropped, default 8).

use std::{
    collections::HashSet,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use super::{
    hec::{self, HecOptions},
    syslog::{Facility, SyslogOptions, Transport},
    Delivery, HecSink, JsonlSink, Severity, Sink, SyslogSink,
};

/// A mistake in the `sinks:` section.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("sinks configuration: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// `sinks[index]` has a bad `field`.
    #[error("sinks[{index}] ({kind}): {field}: {problem}")]
    Invalid { index: usize, kind: &'static str, field: &'static str, problem: String },
    #[error("sinks[{index}] and sinks[{first}] both deliver to {name}; remove one")]
    Duplicate { index: usize, first: usize, name: String },
}

/// The `sinks:` section as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
}

/// One entry of `sinks:`, by its `type`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    Jsonl(JsonlConfig),
    Syslog(SyslogConfig),
    Hec(HecConfig),
}

/// `type: jsonl`: one receipt per line, appended to a file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    pub path: PathBuf,
    #[serde(flatten)]
    pub delivery: DeliveryConfig,
}

/// `type: syslog`: RFC 5424 messages to a syslog server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `HOST:PORT`.
    pub address: String,
    #[serde(default)]
    pub transport: Transport,
    pub app_name: Option<String>,
    #[serde(default)]
    pub facility: Facility,
    #[serde(flatten)]
    pub delivery: DeliveryConfig,
}

/// `type: hec`: Splunk's HTTP Event Collector.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HecConfig {
    pub url: String,
    /// A file holding the token, so that it is not in the (more widely readable)
    /// configuration.
    pub token_file: PathBuf,
    #[serde(flatten)]
    pub delivery: DeliveryConfig,
}

/// The knobs every sink has, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct DeliveryConfig {
    pub min_severity: Option<Severity>,
    pub queue_max: Option<usize>,
    pub batch_max: Option<usize>,
    /// A duration such as `500ms` or `2s`.
    pub retry_base: Option<String>,
    pub retry_cap: Option<String>,
    pub max_attempts: Option<u32>,
}

/// A checked sink: where it delivers and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    pub target: Target,
    pub delivery: Delivery,
}

/// Where a checked sink delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Jsonl { path: PathBuf },
    Syslog(SyslogOptions),
    Hec(HecOptions),
}

impl SinkSpec {
    /// The sink's name in logs and `agentctl status`.
    pub fn name(&self) -> String {
        match &self.target {
            Target::Jsonl { path } => format!("jsonl:{}", path.display()),
            Target::Syslog(o) => format!("syslog:{}://{}", o.transport.as_str(), o.address),
            Target::Hec(o) => format!("hec:{}", o.endpoint.url),
        }
    }

    /// Makes the sink. Nothing is opened or connected yet: that happens on the first
    /// delivery, and is retried like any delivery, so a receiver that is down when
    /// agentd starts does not stop it.
    pub fn build(&self) -> std::io::Result<Box<dyn Sink>> {
        Ok(match &self.target {
            Target::Jsonl { path } => Box::new(JsonlSink::new(path.clone())),
            Target::Syslog(o) => Box::new(SyslogSink::new(o.clone())),
            Target::Hec(o) => Box::new(HecSink::new(o.clone())?),
        })
    }
}

impl SinksConfig {
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Ok(serde_yaml::from_str(text)?)
    }

    /// Checks every sink; the first problem found is the error. Reads each HEC
    /// `token_file`.
    pub fn validate(&self) -> Result<Vec<SinkSpec>, ConfigError> {
        let mut specs: Vec<SinkSpec> = Vec::with_capacity(self.sinks.len());
        let mut seen = HashSet::new();
        for (index, sink) in self.sinks.iter().enumerate() {
            let spec = sink.validate(index)?;
            let name = spec.name();
            if !seen.insert(name.clone()) {
                let first = specs.iter().position(|s| s.name() == name).unwrap_or(0);
                return Err(ConfigError::Duplicate { index, first, name });
            }
            specs.push(spec);
        }
        Ok(specs)
    }
}

impl SinkConfig {
    fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Jsonl(_) => "jsonl",
            SinkConfig::Syslog(_) => "syslog",
            SinkConfig::Hec(_) => "hec",
        }
    }

    fn validate(&self, index: usize) -> Result<SinkSpec, ConfigError> {
        let kind = self.kind();
        let bad = |field: &'static str, problem: String| ConfigError::Invalid { index, kind, field, problem };
        let (target, delivery) = match self {
            SinkConfig::Jsonl(c) => {
                if !c.path.is_absolute() {
                    return Err(bad("path", format!("{} is not an absolute path", c.path.display())));
                }
                (Target::Jsonl { path: c.path.clone() }, &c.delivery)
            }
            SinkConfig::Syslog(c) => {
                check_host_port(&c.address).map_err(|p| bad("address", p))?;
                let app_name = c.app_name.clone().unwrap_or_else(|| "agentd".to_string());
                if app_name.is_empty() || app_name.len() > 48 || !app_name.bytes().all(|b| (33..=126).contains(&b)) {
                    return Err(bad(
                        "app_name",
                        format!("{app_name:?} must be 1 to 48 printable ASCII characters without spaces (RFC 5424)"),
                    ));
                }
                let opts = SyslogOptions {
                    address: c.address.clone(),
                    transport: c.transport,
                    app_name,
                    facility: c.facility,
                };
                (Target::Syslog(opts), &c.delivery)
            }
            SinkConfig::Hec(c) => {
                let endpoint = hec::parse_url(&c.url).map_err(|p| bad("url", p))?;
                let token = read_token(&c.token_file).map_err(|p| bad("token_file", p))?;
                (Target::Hec(HecOptions { endpoint, token }), &c.delivery)
            }
        };
        Ok(SinkSpec { target, delivery: delivery.validate().map_err(|(field, problem)| bad(field, problem))? })
    }
}

impl DeliveryConfig {
    fn validate(&self) -> Result<Delivery, (&'static str, String)> {
        let d = Delivery::default();
        let duration = |field: &'static str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) if !d.is_zero() => Ok(d),
                Ok(_) => Err((field, "must be more than zero".to_string())),
                Err(e) => Err((field, format!("{text:?} is not a duration such as 500ms or 2s ({e})"))),
            },
        };
        let at_least_one = |field: &'static str, v: Option<usize>, default: usize| match v {
            Some(0) => Err((field, "must be at least 1".to_string())),
            v => Ok(v.unwrap_or(default)),
        };
        let delivery = Delivery {
            min_severity: self.min_severity.unwrap_or(d.min_severity),
            queue_max: at_least_one("queue_max", self.queue_max, d.queue_max)?,
            batch_max: at_least_one("batch_max", self.batch_max, d.batch_max)?,
            retry_base: duration("retry_base", &self.retry_base, d.retry_base)?,
            retry_cap: duration("retry_cap", &self.retry_cap, d.retry_cap)?,
            max_attempts: match self.max_attempts {
                Some(0) => return Err(("max_attempts", "must be at least 1".to_string())),
                v => v.unwrap_or(d.max_attempts),
            },
        };
        if delivery.retry_cap < delivery.retry_base {
            return Err((
                "retry_cap",
                format!(
                    "{} is less than retry_base ({})",
                    humantime::format_duration(delivery.retry_cap),
                    humantime::format_duration(delivery.retry_base)
                ),
            ));
        }
        Ok(delivery)
    }
}

/// `HOST:PORT` or `[V6]:PORT`; the name is looked up when connecting.
fn check_host_port(addr: &str) -> Result<(), String> {
    let hint = "expected HOST:PORT, e.g. 127.0.0.1:514 or [::1]:514";
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("{addr:?}: no port; {hint}"))?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').ok_or_else(|| format!("{addr:?}: {hint}"))?,
        None if host.contains(':') => return Err(format!("{addr:?}: put an IPv6 address in brackets; {hint}")),
        None => host,
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/' || c == '@') {
        return Err(format!("{addr:?}: {hint}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!("{addr:?}: port {port:?} is not a number from 1 to 65535")),
    }
}

/// Reads the HEC token, refusing a file anyone on the host could read.
fn read_token(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(format!(
            "{shown} is readable by every user (mode {mode:04o}); run `chmod o-r {shown}` (0600 or 0640 is right)"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{shown} is empty; put the HEC token in it"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{shown} must hold only the token, on one line"));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_file(mode: u32, text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    fn error(yaml: &str) -> String {
        SinksConfig::from_yaml(yaml).and_then(|c| c.validate()).unwrap_err().to_string()
    }

    #[test]
    fn the_documented_example_is_accepted() {
        let token = token_file(0o600, "11111111-2222-3333-4444-555555555555\n");
        let yaml = format!(
            "sinks:
  - type: jsonl
    path: /var/log/agentd/receipts.jsonl
  - type: syslog
    address: 127.0.0.1:514
    transport: tcp
    app_name: agentd
    facility: auth
    min_severity: notice
  - type: hec
    url: http://splunk.example:8088/services/collector/event
    token_file: {}
    batch_max: 100
    min_severity: warning
    retry_base: 1s
    retry_cap: 1m
    max_attempts: 5
",
            token.path().display()
        );
        let specs = SinksConfig::from_yaml(&yaml).unwrap().validate().unwrap();
        let names: Vec<String> = specs.iter().map(SinkSpec::name).collect();
        assert_eq!(
            names,
            [
                "jsonl:/var/log/agentd/receipts.jsonl",
                "syslog:tcp://127.0.0.1:514",
                "hec:http://splunk.example:8088/services/collector/event"
            ]
        );
        assert_eq!(specs[0].delivery, Delivery::default());
        match &specs[1].target {
            Target::Syslog(o) => {
                assert_eq!((o.transport, o.facility, o.app_name.as_str()), (Transport::Tcp, Facility::Auth, "agentd"))
            }
            t => panic!("{t:?}"),
        }
        assert_eq!(specs[1].delivery.min_severity, Severity::Notice);
        match &specs[2].target {
            Target::Hec(o) => assert_eq!(o.token, "11111111-2222-3333-4444-555555555555"),
            t => panic!("{t:?}"),
        }
        let d = &specs[2].delivery;
        assert_eq!((d.min_severity, d.batch_max, d.max_attempts), (Severity::Warning, 100, 5));
        assert_eq!((d.retry_base, d.retry_cap), (Duration::from_secs(1), Duration::from_secs(60)));
        assert!(SinksConfig::from_yaml("{}").unwrap().validate().unwrap().is_empty());
    }

    #[test]
    fn mistakes_say_which_sink_and_what_to_do() {
        let e = error("sinks:\n  - type: jsonl\n    path: /x\n    colour: red\n");
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = error("sinks:\n  - type: kafka\n    path: /x\n");
        assert!(e.contains("unknown variant `kafka`"), "{e}");
        let e = error("sinks:\n  - type: jsonl\n    path: x.jsonl\n");
        assert_eq!(e, "sinks[0] (jsonl): path: x.jsonl is not an absolute path");
        let e = error("sinks:\n  - type: jsonl\n    path: /x\n  - type: syslog\n    address: 127.0.0.1\n");
        assert!(e.starts_with("sinks[1] (syslog): address: \"127.0.0.1\": no port"), "{e}");
        let e = error("sinks:\n  - type: syslog\n    address: ::1:514\n");
        assert!(e.contains("brackets"), "{e}");
        let e = error("sinks:\n  - type: syslog\n    address: h:70000\n");
        assert!(e.contains("port \"70000\""), "{e}");
        let e = error("sinks:\n  - type: syslog\n    address: h:514\n    facility: mail2\n");
        assert!(e.contains("unknown variant `mail2`"), "{e}");
        let e = error("sinks:\n  - type: syslog\n    address: h:514\n    app_name: agent d\n");
        assert!(e.contains("app_name"), "{e}");
        let e = error("sinks:\n  - type: syslog\n    address: h:514\n    min_severity: loud\n");
        assert!(e.contains("unknown variant `loud`"), "{e}");
        let e = error("sinks:\n  - type: syslog\n    address: h:514\n    transport: sctp\n");
        assert!(e.contains("unknown variant `sctp`"), "{e}");
        let e = error("sinks:\n  - type: jsonl\n    path: /x\n    batch_max: 0\n");
        assert_eq!(e, "sinks[0] (jsonl): batch_max: must be at least 1");
        let e = error("sinks:\n  - type: jsonl\n    path: /x\n    max_attempts: 0\n");
        assert_eq!(e, "sinks[0] (jsonl): max_attempts: must be at least 1");
        let e = error("sinks:\n  - type: jsonl\n    path: /x\n    retry_base: soon\n");
        assert!(e.starts_with("sinks[0] (jsonl): retry_base: \"soon\" is not a duration"), "{e}");
        let e = error("sinks:\n  - type: jsonl\n    path: /x\n    retry_base: 10s\n    retry_cap: 1s\n");
        assert_eq!(e, "sinks[0] (jsonl): retry_cap: 1s is less than retry_base (10s)");
        let e = error("sinks:\n  - type: jsonl\n    path: /x\n  - type: jsonl\n    path: /x\n");
        assert_eq!(e, "sinks[1] and sinks[0] both deliver to jsonl:/x; remove one");
    }

    #[test]
    fn the_hec_token_file_must_be_private() {
        let hec = |url: &str, path: &Path| {
            format!("sinks:\n  - type: hec\n    url: {url}\n    token_file: {}\n", path.display())
        };
        let open = token_file(0o644, "abc\n");
        let e = error(&hec("http://h:8088/services/collector/event", open.path()));
        assert!(e.starts_with("sinks[0] (hec): token_file: "), "{e}");
        assert!(e.contains("readable by every user (mode 0644)") && e.contains("chmod o-r"), "{e}");
        let empty = token_file(0o600, "\n");
        assert!(error(&hec("http://h/", empty.path())).contains("is empty"));
        let missing = Path::new("/nonexistent/hec-token");
        assert!(error(&hec("http://h/", missing)).contains("/nonexistent/hec-token: No such file"));
        let ok = token_file(0o640, "abc");
        let e = error(&hec("https://h:8088/services/collector/event", ok.path()));
        assert!(e.starts_with("sinks[0] (hec): url: ") && e.contains("https"), "{e}");
    }
}
