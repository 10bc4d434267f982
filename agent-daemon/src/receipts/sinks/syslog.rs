//! The syslog sink: each receipt as one RFC 5424 message, over UDP (RFC 5426, one
//! message per datagram) or TCP (RFC 6587 octet counting, `LEN SP MSG`, the framing
//! RFC 5425 uses too).
//!
//! ```text
//! <36>1 2026-11-22T19:54:42.123456Z host agentd 4242 decision [agentd@32473 seq="7" id="r-7" verdict="deny"] BOM{"seq":7,...}
//! ```
//!
//! PRI is facility × 8 + severity (info 6, notice 5, warning 4, critical 2); the
//! timestamp is UTC with microseconds; MSGID is the receipt's kind; the structured data
//! element `agentd@32473` carries seq, id and verdict, so a syslog server can route on
//! them without parsing the message (32473 is the private enterprise number RFC 5612
//! sets aside for documentation); MSG is a UTF-8 BOM and the receipt's canonical JSON,
//! unchanged.
//!
//! Syslog has no acknowledgements: a batch counts as delivered once the kernel took it.
//! Over TCP, a connection the server has closed is noticed before a batch is written
//! (and reopened), not after.

use std::{
    io::{self, Write as _},
    net::{SocketAddr, TcpStream, ToSocketAddrs as _, UdpSocket},
    time::{Duration, SystemTime},
};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

use super::{Record, Severity, Sink, SinkError};

/// The structured-data element's SD-ID: `name@PEN`, with the documentation PEN.
pub const SD_ID: &str = "agentd@32473";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// How messages travel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// The syslog facility, by its usual name (RFC 5424 section 6.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Facility {
    Kern,
    User,
    Mail,
    Daemon,
    /// Security and authorization messages: what receipts are.
    #[default]
    Auth,
    Syslog,
    Lpr,
    News,
    Uucp,
    Cron,
    Authpriv,
    Ftp,
    Ntp,
    Audit,
    Alert,
    Clock,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl Facility {
    /// The numerical code: `kern` 0 ... `local7` 23.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A syslog sink's settings, checked (see `config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogOptions {
    /// `HOST:PORT`, looked up on each (re)connect.
    pub address: String,
    pub transport: Transport,
    /// 1 to 48 printable ASCII characters.
    pub app_name: String,
    pub facility: Facility,
}

/// The syslog severity a receipt's severity maps to.
pub fn syslog_severity(s: Severity) -> u8 {
    match s {
        Severity::Info => 6,
        Severity::Notice => 5,
        Severity::Warning => 4,
        Severity::Critical => 2,
    }
}

/// PRI: facility × 8 + severity.
pub fn pri(facility: Facility, severity: Severity) -> u8 {
    facility.code() * 8 + syslog_severity(severity)
}

/// RFC 3339 in UTC with microseconds, as RFC 5424's TIMESTAMP allows (at most 6
/// fraction digits).
pub fn timestamp(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A header field (HOSTNAME, APP-NAME, PROCID, MSGID) is 1 to `max` printable ASCII
/// characters without spaces; anything else becomes `_`, and an empty field the
/// NILVALUE `-`.
pub fn header_field(s: &str, max: usize) -> String {
    if s.is_empty() {
        return "-".to_string();
    }
    s.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).take(max).collect()
}

/// A PARAM-VALUE with `"`, `\` and `]` escaped by a backslash, as RFC 5424 section
/// 6.3.3 requires.
pub fn escape_param_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The RFC 5424 message for one receipt.
pub fn format_message(r: &Record, facility: Facility, app_name: &str, procid: &str) -> String {
    format!(
        "<{pri}>1 {ts} {host} {app} {procid} {msgid} [{SD_ID} seq=\"{seq}\" id=\"{id}\" verdict=\"{verdict}\"] \u{feff}{msg}",
        pri = pri(facility, r.severity),
        ts = timestamp(r.time),
        host = header_field(&r.host, 255),
        app = header_field(app_name, 48),
        procid = header_field(procid, 128),
        msgid = header_field(&r.kind, 32),
        seq = r.seq,
        id = escape_param_value(&r.id),
        verdict = escape_param_value(&r.verdict),
        msg = r.line,
    )
}

/// RFC 6587 octet counting: the message's length in bytes, a space, the message.
pub fn frame(msg: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg.as_bytes());
}

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

/// Sends receipts to a syslog server; see the module documentation.
pub struct SyslogSink {
    opts: SyslogOptions,
    name: String,
    procid: String,
    conn: Option<Conn>,
}

impl SyslogSink {
    /// Nothing is looked up or connected until the first delivery.
    pub fn new(opts: SyslogOptions) -> Self {
        SyslogSink {
            name: format!("syslog:{}://{}", opts.transport.as_str(), opts.address),
            procid: std::process::id().to_string(),
            opts,
            conn: None,
        }
    }

    fn connect(&self) -> io::Result<Conn> {
        let addrs: Vec<SocketAddr> = self.opts.address.to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no addresses");
        for addr in addrs {
            let conn = match self.opts.transport {
                Transport::Udp => {
                    let local: SocketAddr =
                        if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
                    UdpSocket::bind(local).and_then(|s| s.connect(addr).map(|()| Conn::Udp(s)))
                }
                Transport::Tcp => TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).and_then(|s| {
                    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                    s.set_nodelay(true)?;
                    Ok(Conn::Tcp(s))
                }),
            };
            match conn {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn send(&mut self, msgs: &[String]) -> io::Result<()> {
        if matches!(&self.conn, Some(Conn::Tcp(s)) if peer_closed(s)) {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        match self.conn.as_mut().expect("connected above") {
            Conn::Udp(s) => msgs.iter().try_for_each(|m| s.send(m.as_bytes()).map(drop)),
            Conn::Tcp(s) => {
                let mut buf = Vec::with_capacity(msgs.iter().map(|m| m.len() + 8).sum());
                msgs.iter().for_each(|m| frame(m, &mut buf));
                s.write_all(&buf)?;
                s.flush()
            }
        }
    }
}

/// Whether the server has closed the connection (syslog servers never send, so a
/// readable socket means end of stream or an error).
fn peer_closed(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    let closed = match s.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).is_err() || closed
}

impl Sink for SyslogSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        let msgs: Vec<String> =
            batch.iter().map(|r| format_message(r, self.opts.facility, &self.opts.app_name, &self.procid)).collect();
        if self.opts.transport == Transport::Udp {
            if let Some((r, m)) = batch.iter().zip(&msgs).find(|(_, m)| m.len() > MAX_DATAGRAM) {
                return Err(SinkError::Rejected(format!(
                    "receipt seq {} is {} bytes as a syslog message, more than a UDP datagram holds; use transport: tcp",
                    r.seq,
                    m.len()
                )));
            }
        }
        self.send(&msgs).map_err(|e| {
            self.conn = None;
            SinkError::Transient(format!("send to {}: {e}", self.name))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader, Read as _},
        net::TcpListener,
        path::Path,
        process::{Child, Command, Stdio},
        time::Instant,
    };

    use super::*;

    fn record(seq: u64) -> Record {
        Record {
            seq,
            id: format!("r-{seq}"),
            // 2026-11-22T19:54:42.123456Z
            time: SystemTime::UNIX_EPOCH + Duration::new(1_795_377_282, 123_456_789),
            kind: "decision".into(),
            verdict: "deny".into(),
            severity: Severity::Warning,
            host: "box1".into(),
            line: format!(r#"{{"seq":{seq},"verdict":"deny","path":"/usr/bin/curl"}}"#),
        }
    }

    #[test]
    fn formats_an_rfc5424_message() {
        let m = format_message(&record(7), Facility::Auth, "agentd", "4242");
        assert_eq!(
            m,
            "<36>1 2026-11-22T19:54:42.123456Z box1 agentd 4242 decision \
             [agentd@32473 seq=\"7\" id=\"r-7\" verdict=\"deny\"] \u{feff}{\"seq\":7,\"verdict\":\"deny\",\"path\":\"/usr/bin/curl\"}"
        );
        assert_eq!(&m.as_bytes()[m.find('\u{feff}').unwrap()..][..3], b"\xEF\xBB\xBF", "MSG starts with a UTF-8 BOM");
    }

    #[test]
    fn pri_is_facility_times_eight_plus_severity() {
        assert_eq!(pri(Facility::Kern, Severity::Info), 6);
        assert_eq!(pri(Facility::Auth, Severity::Notice), 37);
        assert_eq!(pri(Facility::Auth, Severity::Warning), 36);
        assert_eq!(pri(Facility::Authpriv, Severity::Critical), 82);
        assert_eq!(pri(Facility::Local0, Severity::Info), 134);
        assert_eq!(pri(Facility::Local7, Severity::Critical), 186);
        assert_eq!(Facility::Local7.code(), 23);
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH + Duration::from_nanos(1_999)), "1970-01-01T00:00:00.000001Z");
    }

    #[test]
    fn param_values_escape_quote_backslash_and_bracket() {
        assert_eq!(escape_param_value(r#"a"b\c]d[e=f g"#), r#"a\"b\\c\]d[e=f g"#);
        assert_eq!(escape_param_value("ünïcode"), "ünïcode");
        let mut r = record(1);
        r.id = r#"x"]\"#.into();
        let m = format_message(&r, Facility::Auth, "agentd", "1");
        assert!(m.contains(r#"id="x\"\]\\" verdict="deny"]"#), "{m}");
    }

    #[test]
    fn header_fields_are_printable_ascii_or_nil() {
        assert_eq!(header_field("", 48), "-");
        assert_eq!(header_field("my host\tü", 48), "my_host__");
        assert_eq!(header_field(&"k".repeat(40), 32).len(), 32);
        let mut r = record(1);
        r.host = String::new();
        r.kind = "hold request".into();
        let m = format_message(&r, Facility::Auth, "agentd", "1");
        assert!(m.starts_with("<36>1 2026-11-22T19:54:42.123456Z - agentd 1 hold_request ["), "{m}");
    }

    #[test]
    fn tcp_frames_count_octets() {
        let mut out = Vec::new();
        frame("<6>1 - - - - - - ü", &mut out);
        assert_eq!(out, "19 <6>1 - - - - - - ü".as_bytes());
    }

    #[test]
    fn sends_a_datagram_per_receipt_over_udp() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = SyslogSink::new(SyslogOptions {
            address: server.local_addr().unwrap().to_string(),
            transport: Transport::Udp,
            app_name: "agentd".into(),
            facility: Facility::Local3,
        });
        sink.deliver(&[record(1), record(2)]).unwrap();
        let mut buf = [0u8; 2048];
        for seq in [1, 2] {
            let n = server.recv(&mut buf).unwrap();
            let got = std::str::from_utf8(&buf[..n]).unwrap();
            assert!(got.starts_with("<156>1 "), "{got}");
            assert!(got.ends_with(&record(seq).line), "{got}");
        }
    }

    #[test]
    fn reconnects_over_tcp_after_the_server_closed_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sink = SyslogSink::new(SyslogOptions {
            address: listener.local_addr().unwrap().to_string(),
            transport: Transport::Tcp,
            app_name: "agentd".into(),
            facility: Facility::Auth,
        });
        sink.deliver(&[record(1), record(2)]).unwrap();
        let (first, _) = listener.accept().unwrap();
        let frames = read_frames(&first, 2);
        assert!(frames[0].starts_with("<36>1 ") && frames[1].ends_with(&record(2).line), "{frames:?}");
        drop(first);
        // Let the FIN arrive before the next batch.
        std::thread::sleep(Duration::from_millis(100));
        sink.deliver(&[record(3)]).unwrap();
        let (second, _) = listener.accept().unwrap();
        assert!(read_frames(&second, 1)[0].ends_with(&record(3).line));
    }

    #[test]
    fn no_server_is_a_transient_error() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut sink = SyslogSink::new(SyslogOptions {
            address: format!("127.0.0.1:{port}"),
            transport: Transport::Tcp,
            app_name: "agentd".into(),
            facility: Facility::Auth,
        });
        let e = sink.deliver(&[record(1)]).unwrap_err();
        assert!(e.is_transient() && e.to_string().contains("send to syslog:tcp://127.0.0.1:"), "{e}");
    }

    /// Reads `n` octet-counted frames.
    fn read_frames(s: &TcpStream, n: usize) -> Vec<String> {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(s);
        (0..n)
            .map(|_| {
                let mut len = Vec::new();
                r.read_until(b' ', &mut len).unwrap();
                let len: usize = std::str::from_utf8(&len).unwrap().trim_end().parse().unwrap();
                let mut msg = vec![0u8; len];
                r.read_exact(&mut msg).unwrap();
                String::from_utf8(msg).unwrap()
            })
            .collect()
    }

    /// An rsyslogd of our own, stopped (and its files removed) when dropped.
    struct Rsyslogd {
        child: Child,
        _dir: tempfile::TempDir,
    }

    impl Drop for Rsyslogd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Starts rsyslogd listening on loopback (TCP and UDP on the same port), writing
    /// what it gets to `out.log` in RFC 5424 form and, field by field as rsyslog parsed
    /// it, to `fields.log`. None if rsyslogd is not installed.
    fn start_rsyslogd() -> Option<(Rsyslogd, u16, std::path::PathBuf)> {
        // PATH, and the sbin directories a non-root PATH often lacks.
        let path = std::env::var_os("PATH").unwrap_or_default();
        let bin = std::env::split_paths(&path)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|d| d.join("rsyslogd"))
            .find(|p| p.is_file())?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let out = dir.path().to_path_buf();
        let conf = dir.path().join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}")
module(load="imtcp")
module(load="imudp")
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="receipts")
input(type="imudp" address="127.0.0.1" port="{port}" ruleset="receipts")
template(name="fields" type="string"
  string="pri=%pri% app=%app-name% msgid=%msgid% sd=%structured-data% msg=%msg%\n")
ruleset(name="receipts") {{
  action(type="omfile" file="{work}/out.log" template="RSYSLOG_SyslogProtocol23Format")
  action(type="omfile" file="{work}/fields.log" template="fields")
}}
"#,
                work = dir.path().display(),
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start rsyslogd");
        let daemon = Rsyslogd { child, _dir: dir };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "rsyslogd did not listen on 127.0.0.1:{port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some((daemon, port, out))
    }

    /// Waits until `path` has at least `n` lines.
    fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
        let started = Instant::now();
        loop {
            let lines: Vec<String> =
                std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect();
            if lines.len() >= n || started.elapsed() > Duration::from_secs(10) {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The receipts arrive at a real rsyslogd, over TCP and UDP, with PRI, MSGID,
    /// structured data and the JSON intact. Skips (saying so) without rsyslog.
    #[test]
    fn syslog_delivers_to_a_real_rsyslog() {
        let Some((_daemon, port, dir)) = start_rsyslogd() else {
            eprintln!("SKIP: rsyslogd not found; install rsyslog (apt-get install rsyslog) to run this test");
            return;
        };
        let opts = |transport| SyslogOptions {
            address: format!("127.0.0.1:{port}"),
            transport,
            app_name: "agentd".into(),
            facility: Facility::Auth,
        };
        let mut tricky = record(2);
        tricky.id = r#"id"with]and\"#.into();
        tricky.severity = Severity::Critical;
        tricky.kind = "approval".into();
        tricky.line = r#"{"seq":2,"note":"quote \" and ] and \\ ü"}"#.into();
        SyslogSink::new(opts(Transport::Tcp)).deliver(&[record(1), tricky.clone()]).unwrap();
        let mut by_udp = record(3);
        by_udp.severity = Severity::Info;
        SyslogSink::new(opts(Transport::Udp)).deliver(&[by_udp]).unwrap();

        let lines = wait_for_lines(&dir.join("out.log"), 3);
        assert_eq!(lines.len(), 3, "rsyslogd wrote {lines:#?}");
        let fields = wait_for_lines(&dir.join("fields.log"), 3);
        eprintln!("rsyslogd on 127.0.0.1:{port} wrote:\n{}\nparsed as:\n{}", lines.join("\n"), fields.join("\n"));
        let find = |lines: &[String], seq: u64| {
            lines
                .iter()
                .find(|l| l.contains(&format!("seq=\"{seq}\"")))
                .unwrap_or_else(|| panic!("no seq {seq} in {lines:#?}"))
                .clone()
        };
        // As written to disk, in RFC 5424 form.
        let one = find(&lines, 1);
        assert!(one.starts_with("<36>1 2026-11-22T19:54:42.123456"), "{one}");
        assert!(one.contains(" box1 agentd ") && one.contains(" decision "), "{one}");
        assert!(one.contains(r#" [agentd@32473 seq="1" id="r-1" verdict="deny"] "#), "{one}");
        assert!(one.ends_with(&format!("\u{feff}{}", record(1).line)), "{one}");
        let two = find(&lines, 2);
        assert!(two.starts_with("<34>1 "), "{two}");
        assert!(two.contains(r#" approval [agentd@32473 seq="2" id="id\"with\]and\\" verdict="deny"] "#), "{two}");
        assert!(two.ends_with(&tricky.line), "{two}");
        let three = find(&lines, 3);
        assert!(three.starts_with("<38>1 ") && three.ends_with(&record(3).line), "{three}");

        // As rsyslog parsed it: each part landed in its own field.
        let sd = |r: &Record| {
            format!(
                "[agentd@32473 seq=\"{}\" id=\"{}\" verdict=\"{}\"]",
                r.seq,
                escape_param_value(&r.id),
                escape_param_value(&r.verdict)
            )
        };
        assert_eq!(
            find(&fields, 1),
            format!("pri=36 app=agentd msgid=decision sd={} msg=\u{feff}{}", sd(&record(1)), record(1).line)
        );
        assert_eq!(
            find(&fields, 2),
            format!("pri=34 app=agentd msgid=approval sd={} msg=\u{feff}{}", sd(&tricky), tricky.line)
        );
        assert_eq!(
            find(&fields, 3),
            format!("pri=38 app=agentd msgid=decision sd={} msg=\u{feff}{}", sd(&record(3)), record(3).line)
        );
    }
}
