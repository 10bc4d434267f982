//! The Splunk HTTP Event Collector sink: each batch is one POST of concatenated event
//! objects, as HEC's `/services/collector/event` endpoint takes them:
//!
//! ```text
//! POST /services/collector/event HTTP/1.1
//! Authorization: Splunk <token>
//!
//! {"time":1795377282.123,"host":"box1","source":"agentd","sourcetype":"agentd:receipt","event":{...receipt...}}{"time":...}
//! ```
//!
//! The `event` is the receipt's canonical JSON byte for byte, so a receipt found in
//! Splunk can still be checked against its signature. A batch counts as delivered only
//! on HTTP 2xx with HEC's own `{"text":"Success","code":0}`. HTTP 5xx and 429, and
//! no connection or no answer within 10 s, are worth retrying; any other answer (a
//! bad token is 401 or 403, a malformed event 400) will not change by retrying, so the
//! batch is dropped at once and the answer kept as the sink's `last_error`.
//!
//! Plain `http://` only: there is no TLS library in agentd. For an `https://`
//! collector, put a local forwarder or TLS relay in front of it.

use std::{fmt, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{header, Request, Uri};
use hyper_util::rt::TokioIo;
use serde::de::IgnoredAny;

use super::{Record, Sink, SinkError};

const TIMEOUT: Duration = Duration::from_secs(10);
/// HEC answers with a short JSON object; anything longer is not worth reading.
const MAX_ANSWER: usize = 64 * 1024;

/// Where the collector is, parsed once from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As configured, for logs.
    pub url: String,
    /// `host:port` to connect to.
    pub addr: String,
    /// The Host header.
    pub authority: String,
    /// The request target, e.g. `/services/collector/event`.
    pub path: String,
}

/// Parses `http://HOST[:PORT]/PATH` (port 80 if none).
pub fn parse_url(url: &str) -> Result<Endpoint, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url:?} is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{url:?}: https is not supported (agentd has no TLS library); \
                 use http:// to a local forwarder or TLS relay in front of the collector"
            ))
        }
        _ => return Err(format!("{url:?}: expected http://HOST[:PORT]/services/collector/event")),
    }
    let authority = uri.authority().ok_or_else(|| format!("{url:?}: no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{url:?}: no user or password in the URL; the token goes in token_file"));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    // `Uri` reads an out-of-range port as none at all; that must not become port 80.
    let port = match authority.as_str().strip_prefix(host).and_then(|rest| rest.strip_prefix(':')) {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(format!("{url:?}: port {p:?} is not a number from 1 to 65535")),
        },
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok(Endpoint { url: url.to_string(), addr: format!("{host}:{port}"), authority: authority.to_string(), path })
}

/// A HEC sink's settings, checked (see `config`).
#[derive(Clone, PartialEq, Eq)]
pub struct HecOptions {
    pub endpoint: Endpoint,
    /// Read from `token_file`.
    pub token: String,
}

impl fmt::Debug for HecOptions {
    /// Without the token, so that it never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HecOptions").field("endpoint", &self.endpoint).field("token", &"<redacted>").finish()
    }
}

/// The body for one batch: an event object per receipt, back to back.
pub fn encode_batch(batch: &[Record]) -> Result<Vec<u8>, SinkError> {
    let mut out = Vec::with_capacity(batch.iter().map(|r| r.line.len() + 128).sum());
    for r in batch {
        let is_json_object =
            r.line.trim_start().starts_with('{') && serde_json::from_str::<IgnoredAny>(&r.line).is_ok();
        if !is_json_object {
            return Err(SinkError::Rejected(format!(
                "receipt seq {} is not a JSON object; HEC would refuse it",
                r.seq
            )));
        }
        let since_epoch = r.time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let host = serde_json::to_string(&r.host).expect("a string serializes");
        out.extend_from_slice(
            format!(
                r#"{{"time":{}.{:03},"host":{host},"source":"agentd","sourcetype":"agentd:receipt","event":"#,
                since_epoch.as_secs(),
                since_epoch.subsec_millis()
            )
            .as_bytes(),
        );
        out.extend_from_slice(r.line.as_bytes());
        out.push(b'}');
    }
    Ok(out)
}

/// What HEC's answer means for the batch.
pub fn classify(status: u16, answer: &[u8]) -> Result<(), SinkError> {
    let text = String::from_utf8_lossy(answer);
    let text: String = text.trim().chars().take(200).collect();
    match status {
        200..=299 if is_success(answer) => Ok(()),
        200..=299 => Err(SinkError::Rejected(format!(
            "HTTP {status} without HEC's success answer ({text:?}); is the URL a HEC endpoint such as \
             http://HOST:8088/services/collector/event?"
        ))),
        429 => Err(SinkError::Transient(format!("HTTP 429, HEC is throttling: {text}"))),
        500..=599 => Err(SinkError::Transient(format!("HTTP {status}: {text}"))),
        401 | 403 => Err(SinkError::Rejected(format!("HTTP {status}: {text}; check the token in token_file"))),
        _ => Err(SinkError::Rejected(format!("HTTP {status}: {text}"))),
    }
}

/// `{"text":"Success","code":0}`.
fn is_success(answer: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Answer {
        text: String,
        code: i64,
    }
    serde_json::from_slice::<Answer>(answer).is_ok_and(|a| a.code == 0 && a.text == "Success")
}

/// Sends receipts to a Splunk HTTP Event Collector; see the module documentation.
pub struct HecSink {
    opts: HecOptions,
    name: String,
    /// `deliver` is called from the sink's own thread, which drives the async HTTP
    /// client on this runtime.
    rt: tokio::runtime::Runtime,
}

impl HecSink {
    pub fn new(opts: HecOptions) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
        Ok(HecSink { name: format!("hec:{}", opts.endpoint.url), opts, rt })
    }

    /// One POST (on a fresh connection); the status and the answer's body.
    async fn post(&self, body: Vec<u8>) -> Result<(u16, Bytes), String> {
        let ep = &self.opts.endpoint;
        let stream = tokio::net::TcpStream::connect(&ep.addr).await.map_err(|e| format!("connect {}: {e}", ep.addr))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("HTTP: {e}"))?;
        // Errors on the connection come back through the request too.
        tokio::spawn(conn);
        let request = Request::post(ep.path.as_str())
            .header(header::HOST, ep.authority.as_str())
            .header(header::AUTHORIZATION, format!("Splunk {}", self.opts.token))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::USER_AGENT, concat!("agentd/", env!("CARGO_PKG_VERSION")))
            .header(header::CONNECTION, "close")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building the request: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("POST {}: {e}", ep.url))?;
        let status = response.status().as_u16();
        let answer = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading HEC's answer: {e}"))?
            .to_bytes();
        Ok((status, answer))
    }
}

impl Sink for HecSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        let body = encode_batch(batch)?;
        let answer = self.rt.block_on(async { tokio::time::timeout(TIMEOUT, self.post(body)).await });
        match answer {
            Err(_) => Err(SinkError::Transient(format!(
                "{}: no answer within {} s",
                self.opts.endpoint.url,
                TIMEOUT.as_secs()
            ))),
            Ok(Err(e)) => Err(SinkError::Transient(e)),
            Ok(Ok((status, answer))) => classify(status, &answer),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        net::SocketAddr,
        sync::{Arc, Mutex},
        time::{Instant, SystemTime},
    };

    use hyper::{body::Incoming, service::service_fn, Response};
    use serde_json::{json, Value};

    use super::*;
    use crate::receipts::sinks::{Delivery, Dispatcher, Severity, SinkStats};

    const TOKEN: &str = "11111111-2222-3333-4444-555555555555";
    const SUCCESS: &str = r#"{"text":"Success","code":0}"#;

    fn record(seq: u64) -> Record {
        Record {
            seq,
            id: format!("r-{seq}"),
            time: SystemTime::UNIX_EPOCH + Duration::new(1_795_377_282, 123_456_789),
            kind: "decision".into(),
            verdict: "deny".into(),
            severity: Severity::Warning,
            host: "box \"1\"".into(),
            line: format!(r#"{{"seq":{seq},"verdict":"deny","path":"/usr/bin/curl"}}"#),
        }
    }

    #[test]
    fn a_batch_is_event_objects_back_to_back() {
        let body = encode_batch(&[record(1), record(2)]).unwrap();
        let text = String::from_utf8(body.clone()).unwrap();
        assert_eq!(
            text,
            r#"{"time":1795377282.123,"host":"box \"1\"","source":"agentd","sourcetype":"agentd:receipt","event":{"seq":1,"verdict":"deny","path":"/usr/bin/curl"}}"#
                .to_string()
                + r#"{"time":1795377282.123,"host":"box \"1\"","source":"agentd","sourcetype":"agentd:receipt","event":{"seq":2,"verdict":"deny","path":"/usr/bin/curl"}}"#
        );
        let events: Vec<Value> = serde_json::Deserializer::from_slice(&body).into_iter().map(Result::unwrap).collect();
        assert_eq!(events[1]["event"], json!({"seq": 2, "verdict": "deny", "path": "/usr/bin/curl"}));
        assert_eq!(events[0]["time"].as_f64(), Some(1_795_377_282.123));

        let mut bad = record(3);
        bad.line = "[1,2]".into();
        let e = encode_batch(&[record(1), bad]).unwrap_err();
        assert_eq!(e, SinkError::Rejected("receipt seq 3 is not a JSON object; HEC would refuse it".into()));
    }

    #[test]
    fn only_hecs_success_answer_counts_as_delivered() {
        assert_eq!(classify(200, SUCCESS.as_bytes()), Ok(()));
        assert_eq!(classify(200, br#"{"code":0,"text":"Success","ackId":7}"#), Ok(()));
        assert!(!classify(200, b"<html>welcome</html>").unwrap_err().is_transient());
        assert!(!classify(200, br#"{"text":"Invalid data format","code":6}"#).unwrap_err().is_transient());
        assert!(classify(503, br#"{"text":"Server is busy","code":9}"#).unwrap_err().is_transient());
        assert!(classify(429, b"").unwrap_err().is_transient());
        let e = classify(403, br#"{"text":"Invalid token","code":4}"#).unwrap_err();
        assert_eq!(
            e,
            SinkError::Rejected(r#"HTTP 403: {"text":"Invalid token","code":4}; check the token in token_file"#.into())
        );
        assert!(!classify(400, b"").unwrap_err().is_transient());
        assert!(!classify(301, b"").unwrap_err().is_transient());
    }

    #[test]
    fn urls() {
        let e = parse_url("http://splunk.example:8088/services/collector/event").unwrap();
        assert_eq!(
            (e.addr.as_str(), e.authority.as_str(), e.path.as_str()),
            ("splunk.example:8088", "splunk.example:8088", "/services/collector/event")
        );
        let e = parse_url("http://[::1]/services/collector/event?channel=x").unwrap();
        assert_eq!((e.addr.as_str(), e.path.as_str()), ("[::1]:80", "/services/collector/event?channel=x"));
        assert!(parse_url("https://splunk.example:8088/services/collector/event")
            .unwrap_err()
            .contains("https is not supported"));
        assert!(parse_url("http://user:pw@h/").unwrap_err().contains("token_file"));
        assert!(parse_url("ftp://h/").unwrap_err().contains("expected http://"));
        assert!(parse_url("/services/collector").is_err());
        assert!(parse_url("http://h:99999/").unwrap_err().contains("port \"99999\""));
        assert!(parse_url("http://h:0/").is_err());
    }

    #[test]
    fn the_token_is_not_in_debug_output() {
        let opts = HecOptions { endpoint: parse_url("http://h/").unwrap(), token: TOKEN.into() };
        assert!(!format!("{opts:?}").contains(TOKEN));
    }

    /// What the fake collector saw of one request.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        authorization: Option<String>,
        content_type: Option<String>,
        body: Vec<u8>,
    }

    /// A HEC stand-in on loopback: answers from a script of (status, body), then with
    /// success; remembers every request. Stops when dropped.
    struct FakeHec {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<Seen>>>,
        _rt: tokio::runtime::Runtime,
    }

    impl FakeHec {
        fn start(script: Vec<(u16, &'static str)>) -> Self {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let script = Arc::new(Mutex::new(VecDeque::from(script)));
            rt.spawn({
                let seen = Arc::clone(&seen);
                async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else { return };
                        let (seen, script) = (Arc::clone(&seen), Arc::clone(&script));
                        let service = service_fn(move |req: Request<Incoming>| {
                            let (seen, script) = (Arc::clone(&seen), Arc::clone(&script));
                            async move {
                                let header = |name| {
                                    req.headers()
                                        .get(name)
                                        .map(|v: &header::HeaderValue| v.to_str().unwrap().to_string())
                                };
                                let mut s = Seen {
                                    method: req.method().to_string(),
                                    path: req.uri().to_string(),
                                    authorization: header(header::AUTHORIZATION),
                                    content_type: header(header::CONTENT_TYPE),
                                    body: Vec::new(),
                                };
                                s.body = req.into_body().collect().await?.to_bytes().to_vec();
                                seen.lock().unwrap().push(s);
                                let (status, body) = script.lock().unwrap().pop_front().unwrap_or((200, SUCCESS));
                                Ok::<_, hyper::Error>(
                                    Response::builder().status(status).body(Full::new(Bytes::from(body))).unwrap(),
                                )
                            }
                        });
                        tokio::spawn(
                            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                        );
                    }
                }
            });
            FakeHec { addr, seen, _rt: rt }
        }

        fn sink(&self) -> HecSink {
            let endpoint = parse_url(&format!("http://{}/services/collector/event", self.addr)).unwrap();
            HecSink::new(HecOptions { endpoint, token: TOKEN.into() }).unwrap()
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    #[test]
    fn posts_a_batch_with_the_token() {
        let hec = FakeHec::start(vec![]);
        let mut sink = hec.sink();
        sink.deliver(&[record(1), record(2)]).unwrap();
        let seen = hec.seen();
        assert_eq!(seen.len(), 1);
        let s = &seen[0];
        assert_eq!((s.method.as_str(), s.path.as_str()), ("POST", "/services/collector/event"));
        assert_eq!(s.authorization.as_deref(), Some(format!("Splunk {TOKEN}").as_str()));
        assert_eq!(s.content_type.as_deref(), Some("application/json"));
        let events: Vec<Value> =
            serde_json::Deserializer::from_slice(&s.body).into_iter().map(Result::unwrap).collect();
        assert_eq!(events.len(), 2);
        for (e, seq) in events.iter().zip([1, 2]) {
            assert_eq!(e["source"], "agentd");
            assert_eq!(e["sourcetype"], "agentd:receipt");
            assert_eq!(e["host"], "box \"1\"");
            assert_eq!(e["event"], serde_json::from_str::<Value>(&record(seq).line).unwrap());
        }
    }

    #[test]
    fn a_refused_connection_is_transient() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let endpoint = parse_url(&format!("http://127.0.0.1:{port}/services/collector/event")).unwrap();
        let e = HecSink::new(HecOptions { endpoint, token: TOKEN.into() }).unwrap().deliver(&[record(1)]).unwrap_err();
        assert!(e.is_transient() && e.to_string().starts_with("connect 127.0.0.1:"), "{e}");
    }

    use crate::receipts::sinks::worker::test_support::wait_for;

    /// Through the dispatcher: two 503s are retried with backoff and the batch lands;
    /// then a 400 drops the next batch at once, without a retry, and `last_error` says why.
    #[test]
    fn retries_hec_503s_and_drops_on_400() {
        let busy = r#"{"text":"Server is busy","code":9}"#;
        let hec = FakeHec::start(vec![
            (503, busy),
            (503, busy),
            (200, SUCCESS),
            (400, r#"{"text":"Invalid data format","code":6}"#),
        ]);
        let mut d = Dispatcher::new();
        let delivery = Delivery {
            retry_base: Duration::from_millis(50),
            retry_cap: Duration::from_millis(200),
            max_attempts: 5,
            ..Delivery::default()
        };
        d.add(Box::new(hec.sink()), delivery).unwrap();
        assert!(d.stats()[0].name.starts_with("hec:http://127.0.0.1:"));
        let started = Instant::now();
        d.push(record(1));
        let s = wait_for(&d, |s| s.delivered == 1);
        assert!(started.elapsed() >= Duration::from_millis(150), "backed off 50 ms then 100 ms");
        assert_eq!((s.failed_attempts, s.dropped, s.queued), (2, 0, 0));
        assert_eq!(s.last_error.as_deref(), Some(r#"HTTP 503: {"text":"Server is busy","code":9}"#));

        d.push(record(2));
        let s = wait_for(&d, |s| s.dropped == 1);
        assert_eq!(
            s,
            SinkStats {
                delivered: 1,
                dropped: 1,
                failed_attempts: 3,
                queued: 0,
                last_error: Some(r#"HTTP 400: {"text":"Invalid data format","code":6}"#.into()),
            }
        );
        let seen = hec.seen();
        assert_eq!(seen.len(), 4, "three tries for the first batch, one for the second");
        assert!(seen.iter().all(|s| s.authorization.as_deref() == Some(&*format!("Splunk {TOKEN}"))));
        assert_eq!(seen[0].body, seen[2].body, "a retry sends the same batch");
        let last: Vec<Value> =
            serde_json::Deserializer::from_slice(&seen[3].body).into_iter().map(Result::unwrap).collect();
        assert_eq!(last.iter().map(|e| e["event"]["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [2]);
    }
}
