//! A standby sends the writes it receives on to the leader and answers with the leader's answer,
//! so that every client, the web console among them, may talk to any server (as Vault's
//! standbys forward to the active node). The leader must know who the client was (the sign-in
//! limits count failures per address): the standby says so in a header that only servers can
//! write, a MAC under a key every server derives from the CA key they share.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ring::hmac;

/// The header a standby adds: `ADDRESS SECONDS MAC`.
pub const FORWARDED_FOR: &str = "tresor-forwarded-for";
/// How far a forwarded request's time may be from the leader's clock.
const MAX_SKEW_SECS: u64 = 120;

/// Why a forwarded request's header is not believed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForwardError {
    #[error("The {FORWARDED_FOR} header is malformed")]
    Malformed,
    #[error("The {FORWARDED_FOR} header is not from a server of this cluster")]
    BadMac,
    #[error("The {FORWARDED_FOR} header is {0} s away from this server's clock; check the servers' clocks (NTP)")]
    Stale(u64),
}

/// What a standby needs to send writes on, and a leader to believe them.
pub struct Forwarder {
    http: reqwest::Client,
    key: hmac::Key,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Forwarder")
    }
}

/// Why a request could not be sent on.
#[derive(Debug)]
pub enum Failure {
    /// Nothing reached the leader: the client may send the request there itself.
    NotSent(String),
    /// The leader may have carried it out, but its answer did not come back whole.
    NoAnswer(String),
}

impl Forwarder {
    /// `ca_key_pem` is the key of the CA all servers share; `anchors` the CAs that issue the
    /// servers' API certificates.
    pub fn new(
        ca_key_pem: &str,
        anchors: Vec<tresor_tls::CertificateDer<'static>>,
    ) -> Result<Forwarder, String> {
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"tresor standby forwarding")
            .extract(ca_key_pem.as_bytes());
        let key = hmac::Key::from(
            prk.expand(&[b"v1"], hmac::HMAC_SHA256)
                .map_err(|_| "cannot derive the forwarding key".to_owned())?,
        );
        let tls = tresor_tls::https_client_config(
            &tresor_tls::ServerTrust::Roots(anchors),
            std::sync::Arc::new(std::sync::Mutex::new(None)),
        )
        .map_err(|e| format!("cannot set up TLS to the leader: {e}"))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .tls_backend_preconfigured((*tls).clone())
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(Forwarder { http, key })
    }

    fn mac(&self, address: IpAddr, secs: u64, method: &str, path: &str) -> String {
        let text = format!("{address} {secs} {method} {path}");
        B64.encode(hmac::sign(&self.key, text.as_bytes()).as_ref())
    }

    /// The header value for a request from `address`.
    pub fn header(&self, address: IpAddr, method: &str, path: &str, now: SystemTime) -> String {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        format!("{address} {secs} {}", self.mac(address, secs, method, path))
    }

    /// The client's address a standby vouches for, if the header is one a server wrote for this
    /// request.
    pub fn verify(
        &self,
        value: &str,
        method: &str,
        path: &str,
        now: SystemTime,
    ) -> Result<IpAddr, ForwardError> {
        let mut parts = value.split(' ');
        let (Some(address), Some(secs), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ForwardError::Malformed);
        };
        let address: IpAddr = address.parse().map_err(|_| ForwardError::Malformed)?;
        let secs: u64 = secs.parse().map_err(|_| ForwardError::Malformed)?;
        let mac = B64.decode(mac).map_err(|_| ForwardError::Malformed)?;
        let text = format!("{address} {secs} {method} {path}");
        hmac::verify(&self.key, text.as_bytes(), &mac).map_err(|_| ForwardError::BadMac)?;
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let skew = now.abs_diff(secs);
        if skew > MAX_SKEW_SECS {
            return Err(ForwardError::Stale(skew));
        }
        Ok(address)
    }

    /// Sends `req` from `client` to the leader at `leader` and gives its answer back.
    pub async fn forward(
        &self,
        leader: &str,
        req: Request,
        client: Option<IpAddr>,
    ) -> Result<Response, Failure> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let method = parts.method.as_str();
        let mut out = self
            .http
            .request(parts.method.clone(), format!("{leader}{path}"));
        for (name, value) in &parts.headers {
            if !hop_by_hop(name) && name != "host" && name != FORWARDED_FOR {
                out = out.header(name, value);
            }
        }
        if let Some(address) = client {
            out = out.header(
                FORWARDED_FOR,
                self.header(address, method, path, SystemTime::now()),
            );
        }
        let answer = out
            .body(reqwest::Body::wrap_stream(body.into_data_stream()))
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    Failure::NotSent(e.to_string())
                } else {
                    Failure::NoAnswer(e.to_string())
                }
            })?;
        let mut response = Response::builder().status(answer.status().as_u16());
        for (name, value) in answer.headers() {
            if !hop_by_hop(name) {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_str().as_bytes()),
                    HeaderValue::from_bytes(value.as_bytes()),
                ) {
                    response = response.header(n, v);
                }
            }
        }
        response
            .body(Body::from_stream(answer.bytes_stream()))
            .map_err(|e| Failure::NoAnswer(e.to_string()))
    }
}

fn hop_by_hop(name: &impl AsRef<str>) -> bool {
    matches!(
        name.as_ref(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarder(ca_key: &str) -> Forwarder {
        Forwarder::new(ca_key, Vec::new()).unwrap()
    }

    #[test]
    fn a_leader_believes_only_what_a_server_of_its_cluster_wrote_for_this_request() {
        let ours = forwarder("the cluster's CA key");
        let now = SystemTime::now();
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let value = ours.header(client, "POST", "/api/v1/login", now);
        assert_eq!(
            ours.verify(&value, "POST", "/api/v1/login", now),
            Ok(client)
        );
        // Another request, another address, another cluster: refused.
        assert_eq!(
            ours.verify(&value, "POST", "/api/v1/vms", now),
            Err(ForwardError::BadMac)
        );
        let forged = value.replacen("192.0.2.7", "192.0.2.8", 1);
        assert_eq!(
            ours.verify(&forged, "POST", "/api/v1/login", now),
            Err(ForwardError::BadMac)
        );
        let theirs = forwarder("another CA key").header(client, "POST", "/api/v1/login", now);
        assert_eq!(
            ours.verify(&theirs, "POST", "/api/v1/login", now),
            Err(ForwardError::BadMac)
        );
        // Old, or malformed.
        let later = now + Duration::from_secs(MAX_SKEW_SECS + 5);
        assert!(matches!(
            ours.verify(&value, "POST", "/api/v1/login", later),
            Err(ForwardError::Stale(_))
        ));
        for bad in [
            "",
            "192.0.2.7",
            "x 1 00",
            "192.0.2.7 1 zz",
            "192.0.2.7 1 00 extra",
        ] {
            assert_eq!(
                ours.verify(bad, "POST", "/api/v1/login", now),
                Err(ForwardError::Malformed),
                "{bad:?}"
            );
        }
    }
}
