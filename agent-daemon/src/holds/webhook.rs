//! The webhook notifier: every hold as it starts and as it ends is POSTed, as JSON,
//! to each configured URL, so a chat bot or a UI can show it and answer through
//! agentd's API (`agentctl approve ID`, or the `Approve` RPC).
//!
//! The body is exactly one line of `agentctl approvals watch --json`:
//! `{"type": "pending"|"resolved", "hold": {...}, "resolution": {...}}`. A delivery
//! that fails (no connection, no answer within 5 s, or a status other than 2xx) is
//! retried with exponential backoff from 250 ms, doubling up to 8 s, for as long as
//! the hold can still be decided (its deadline), and at most 8 times for a
//! resolution. Plain `http://` only: put a local relay in front of an `https://`
//! endpoint. Deliveries never delay a decision, and a slow endpoint never holds up
//! another.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tracing::{debug, warn};

/// Deliveries that reached their endpoint with a 2xx answer.
pub static DELIVERED: AtomicU64 = AtomicU64::new(0);
/// Deliveries given up after their retries (counted once per event and URL).
pub static FAILED: AtomicU64 = AtomicU64::new(0);

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
const MAX_RESOLUTION_TRIES: u32 = 8;
const TIMEOUT: Duration = Duration::from_secs(5);

/// A webhook endpoint, parsed once at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` to connect to.
    pub addr: String,
    /// The Host header.
    pub host: String,
    pub path: String,
    /// As given, for logs.
    pub url: String,
}

/// Parses `http://HOST[:PORT]/PATH`.
pub fn parse_url(url: &str) -> Result<Endpoint, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("webhook {url:?}: only http:// URLs are supported (put a local relay in front of an https:// endpoint)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || authority.chars().any(char::is_whitespace) {
        return Err(format!("webhook {url:?}: expected http://HOST[:PORT]/PATH"));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("webhook {url:?}: the path must not contain spaces or control characters"));
    }
    let has_port = match authority.rsplit_once(':') {
        // [v6]:port or host:port
        Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') == h.ends_with(']')) => {
            p.parse::<u16>().map_err(|_| format!("webhook {url:?}: port {p:?} is not a number from 0 to 65535"))?;
            true
        }
        _ => false,
    };
    let addr = if has_port { authority.to_string() } else { format!("{authority}:80") };
    Ok(Endpoint { addr, host: authority.to_string(), path: path.to_string(), url: url.to_string() })
}

/// The wait before retry `n` (0-based): 250 ms, 500 ms, 1 s, ... capped at 8 s.
pub fn backoff(n: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX)).min(MAX_BACKOFF)
}

/// One POST; Ok(status) if an HTTP answer came back.
pub async fn post(ep: &Endpoint, body: &[u8]) -> Result<u16, String> {
    let attempt = async {
        let mut s = TcpStream::connect(&ep.addr).await.map_err(|e| format!("connect {}: {e}", ep.addr))?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: agentd/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            ep.path,
            ep.host,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        s.write_all(head.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        s.write_all(body).await.map_err(|e| format!("send: {e}"))?;
        // The status line is all that matters.
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let r = s.read(&mut buf[n..]).await.map_err(|e| format!("read: {e}"))?;
            if r == 0 {
                break;
            }
            n += r;
        }
        status_code(&buf[..n]).ok_or_else(|| format!("not an HTTP answer: {:?}", String::from_utf8_lossy(&buf[..n])))
    };
    match tokio::time::timeout(TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
    }
}

/// `HTTP/1.x NNN ...` → NNN.
fn status_code(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head).ok()?;
    let mut parts = text.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.get(..3)?.parse().ok()
}

/// Delivers `body` to `ep`, retrying until it is taken or `give_up_at` / the try
/// budget is reached.
pub async fn deliver(ep: Endpoint, body: Vec<u8>, give_up_at: Option<SystemTime>, what: String) {
    let mut tries = 0u32;
    loop {
        let r = post(&ep, &body).await;
        tries += 1;
        let err = match r {
            Ok(s) if (200..300).contains(&s) => {
                DELIVERED.fetch_add(1, Ordering::Relaxed);
                debug!(url = %ep.url, %what, tries, "webhook delivered");
                return;
            }
            Ok(s) => format!("HTTP status {s}"),
            Err(e) => e,
        };
        let wait = backoff(tries - 1);
        let out_of_time = give_up_at.map_or(tries >= MAX_RESOLUTION_TRIES, |t| SystemTime::now() + wait >= t);
        if out_of_time {
            FAILED.fetch_add(1, Ordering::Relaxed);
            warn!(url = %ep.url, %what, tries, error = %err, "webhook delivery failed; giving up");
            return;
        }
        debug!(url = %ep.url, %what, tries, error = %err, retry_in = ?wait, "webhook delivery failed; retrying");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = parse_url("http://127.0.0.1:8080/hooks/agentd").unwrap();
        assert_eq!((e.addr.as_str(), e.host.as_str(), e.path.as_str()), ("127.0.0.1:8080", "127.0.0.1:8080", "/hooks/agentd"));
        let e = parse_url("http://bot.internal").unwrap();
        assert_eq!((e.addr.as_str(), e.path.as_str()), ("bot.internal:80", "/"));
        let e = parse_url("http://[::1]:9000/x").unwrap();
        assert_eq!(e.addr, "[::1]:9000");
        assert_eq!(parse_url("http://[::1]/x").unwrap().addr, "[::1]:80");
        assert!(parse_url("https://example.com/").unwrap_err().contains("only http://"));
        assert!(parse_url("http://h:99999/").unwrap_err().contains("port"));
        assert!(parse_url("http:///x").is_err());
        assert!(parse_url("http://user@h/").is_err());
        assert!(parse_url("http://h/a b").is_err());
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let ms: Vec<u128> = (0..8).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(ms, vec![250, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 503 x"), Some(503));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH"), None);
    }

    #[tokio::test]
    async fn retries_until_the_endpoint_takes_it() {
        // A server that fails the first request and takes the second.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for status in ["503 Busy", "200 OK"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
                            bodies.push(body.to_string());
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await.unwrap();
            }
            bodies
        });
        let ep = parse_url(&format!("http://127.0.0.1:{port}/hook")).unwrap();
        let before = DELIVERED.load(Ordering::Relaxed);
        deliver(ep, br#"{"type":"pending"}"#.to_vec(), Some(SystemTime::now() + Duration::from_secs(30)), "t".into()).await;
        assert_eq!(server.await.unwrap(), vec![r#"{"type":"pending"}"#.to_string(); 2]);
        assert!(DELIVERED.load(Ordering::Relaxed) > before);
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        // Nothing listens on this port (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let ep = parse_url(&format!("http://127.0.0.1:{port}/")).unwrap();
        let before = FAILED.load(Ordering::Relaxed);
        let started = std::time::Instant::now();
        deliver(ep, b"{}".to_vec(), Some(SystemTime::now() + Duration::from_millis(600)), "t".into()).await;
        assert!(started.elapsed() < Duration::from_secs(3), "stopped retrying at the deadline");
        assert!(FAILED.load(Ordering::Relaxed) > before);
    }
}
