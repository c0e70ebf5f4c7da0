//! Events forwarded to syslog (RFC 5424) for a SIEM: every event of the log, as it is recorded,
//! one message each, over UDP (RFC 5426) or TCP with octet counting (RFC 6587). The forwarder
//! follows the event log by id, as the event stream does; events recorded while the collector
//! is unreachable are sent once it answers again (TCP), so that none is skipped while the
//! server runs. It starts with the events recorded after the server started.

use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tresor_api::views::Event;
use tresor_core::Lang;

use crate::service::Context;
use crate::store::EventFilter;

/// `[syslog]` of `server.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// The collector: `udp://HOST:PORT` or `tcp://HOST:PORT`.
    pub address: String,
    /// The facility of the messages (`local0` … `local7`, `auth`, `authpriv`, `daemon`, ...).
    #[serde(default = "default_facility")]
    pub facility: String,
}

fn default_facility() -> String {
    "local0".into()
}

/// Why syslog forwarding cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    #[error("The syslog address {0} is not udp://HOST:PORT or tcp://HOST:PORT")]
    Address(String),
    #[error("The syslog facility {0} is not one of kern, user, mail, daemon, auth, syslog, lpr, news, uucp, cron, authpriv, ftp, local0 … local7")]
    Facility(String),
}

const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// The structured data's id: Tresor's parameters under the enterprise number that RFC 5612
/// sets aside for documentation and examples (Tresor has none registered).
pub const SD_ID: &str = "tresor@32473";

/// Where messages go.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Transport {
    Udp(String),
    Tcp(String),
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Syslog {
    transport: Transport,
    facility: u8,
    hostname: String,
}

impl Syslog {
    pub fn new(config: &SyslogConfig) -> Result<Syslog, SyslogError> {
        let transport = match config.address.split_once("://") {
            Some(("udp", a)) if !a.is_empty() => Transport::Udp(a.to_owned()),
            Some(("tcp", a)) if !a.is_empty() => Transport::Tcp(a.to_owned()),
            _ => return Err(SyslogError::Address(config.address.clone())),
        };
        let facility = FACILITIES
            .iter()
            .position(|f| *f == config.facility)
            .ok_or_else(|| SyslogError::Facility(config.facility.clone()))?
            as u8;
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "-".into());
        Ok(Syslog {
            transport,
            facility,
            hostname,
        })
    }
}

/// The RFC 5424 severity of an event's severity.
fn severity(s: &str) -> u8 {
    match s {
        "error" => 3,
        "warning" => 4,
        _ => 6,
    }
}

/// A header field of RFC 5424: printable US-ASCII without spaces, at most `max` long; `-` when
/// empty.
fn header_field(s: &str, max: usize) -> String {
    let f: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if f.is_empty() {
        "-".into()
    } else {
        f
    }
}

/// A structured-data parameter value, with `"`, `\` and `]` escaped.
fn param_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One event as an RFC 5424 message (without transport framing).
pub fn format(event: &Event, facility: u8, hostname: &str, pid: u32) -> String {
    let pri = facility as u16 * 8 + severity(&event.severity) as u16;
    let time = time::OffsetDateTime::from_unix_timestamp(event.time)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into());
    let mut sd = format!(
        "[{SD_ID} id=\"{}\" severity=\"{}\"",
        event.id, event.severity
    );
    for (name, value) in [
        ("vm", &event.vm),
        ("host", &event.host),
        ("provider", &event.provider),
        ("user", &event.user),
    ] {
        if let Some(v) = value {
            sd.push_str(&format!(" {name}=\"{}\"", param_value(v)));
        }
    }
    sd.push(']');
    format!(
        "<{pri}>1 {time} {} tresor {pid} {} {sd} \u{feff}{}",
        header_field(hostname, 255),
        header_field(&event.event_type, 32),
        event.message
    )
}

/// Follows the event log and sends each new event to the collector, until the task is dropped.
pub async fn forward(cx: Context, syslog: Syslog) {
    let pid = std::process::id();
    let mut after = cx.events().last_id().unwrap_or(0);
    let mut tcp: Option<tokio::net::TcpStream> = None;
    let udp = match &syslog.transport {
        Transport::Udp(_) => match tokio::net::UdpSocket::bind("0.0.0.0:0").await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot open a socket for syslog; events are not forwarded");
                return;
            }
        },
        Transport::Tcp(_) => None,
    };
    let mut failing = false;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let filter = EventFilter {
            after_id: Some(after),
            limit: Some(500),
            ..EventFilter::default()
        };
        let events = match cx.events().list(&filter, Lang::En) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e.message, "cannot read events to forward to syslog");
                continue;
            }
        };
        for e in events {
            let message = format(&e, syslog.facility, &syslog.hostname, pid);
            let sent = match (&syslog.transport, &udp) {
                (Transport::Udp(address), Some(socket)) => socket
                    .send_to(message.as_bytes(), address)
                    .await
                    .map(|_| ()),
                (Transport::Tcp(address), _) => send_tcp(&mut tcp, address, &message).await,
                _ => Ok(()),
            };
            match sent {
                Ok(()) => {
                    after = e.id;
                    if failing {
                        tracing::info!("syslog forwarding works again");
                        failing = false;
                    }
                }
                Err(err) => {
                    // Said once until it works again; the event is sent again next time.
                    if !failing {
                        tracing::warn!(error = %err, address = ?syslog.transport, "cannot forward events to syslog; trying again");
                        failing = true;
                    }
                    tcp = None;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    break;
                }
            }
        }
    }
}

/// Sends one message over TCP with octet counting, connecting first when needed.
async fn send_tcp(
    conn: &mut Option<tokio::net::TcpStream>,
    address: &str,
    message: &str,
) -> std::io::Result<()> {
    if conn.is_none() {
        let c = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(address),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        *conn = Some(c);
    }
    let Some(c) = conn.as_mut() else {
        return Ok(());
    };
    let framed = format!("{} {message}", message.len());
    c.write_all(framed.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            id: 42,
            time: 1_796_000_000,
            event_type: "vm.locked.keyMissingOnHost".into(),
            severity: "error".into(),
            vm: Some("web\"01]".into()),
            host: Some("host-1".into()),
            provider: None,
            user: None,
            message: "The virtual machine is locked because keys are missing on the host.".into(),
        }
    }

    #[test]
    fn an_event_is_an_rfc_5424_message() {
        let m = format(&event(), 16, "kvm-7", 1234);
        // local0 (16) * 8 + err (3) = 131.
        assert_eq!(
            m,
            "<131>1 2026-11-30T00:53:20Z kvm-7 tresor 1234 vm.locked.keyMissingOnHost \
             [tresor@32473 id=\"42\" severity=\"error\" vm=\"web\\\"01\\]\" host=\"host-1\"] \
             \u{feff}The virtual machine is locked because keys are missing on the host."
        );
    }

    #[test]
    fn addresses_and_facilities_are_checked() {
        let c = |address: &str, facility: &str| SyslogConfig {
            address: address.into(),
            facility: facility.into(),
        };
        assert!(Syslog::new(&c("udp://127.0.0.1:514", "local0")).is_ok());
        assert_eq!(
            Syslog::new(&c("tcp://siem:6514", "authpriv"))
                .unwrap()
                .facility,
            10
        );
        assert!(matches!(
            Syslog::new(&c("127.0.0.1:514", "local0")),
            Err(SyslogError::Address(_))
        ));
        assert!(matches!(
            Syslog::new(&c("udp://x:1", "local9")),
            Err(SyslogError::Facility(_))
        ));
        // A long or odd message id is cut to what the header allows.
        assert_eq!(header_field("a b\u{e9}c", 32), "abc");
        assert_eq!(header_field("", 32), "-");
    }
}
